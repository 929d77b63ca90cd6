"""msec: group key management for IPsec on Linux (gkm), next to xfrm and policy."""

__version__ = "0.1.0"
