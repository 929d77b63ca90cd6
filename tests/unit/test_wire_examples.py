"""Every example message (Main Mode, GROUPKEY-PULL/PUSH/ACK, Informational) round-trips exactly."""

import pytest

from gkm.wire import Message, decode_header, decode_message, encode_message
from gkm.wire.examples import all_examples

EXAMPLES = all_examples()


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_round_trip(name):
    header, payloads = EXAMPLES[name]
    block = 16 if header.encrypted else None
    data = encode_message(header, payloads, block_size=block)
    msg = decode_message(data, block_size=block)
    assert msg == Message(header, payloads, msg.padding)
    assert msg.to_bytes() == data
    assert encode_message(msg.header, msg.payloads, block_size=block) == data
    h, np, length = decode_header(data)
    assert (h, np, length) == (header, payloads[0].TYPE, len(data))
    if block:
        assert (len(data) - 28) % block == 0 and set(msg.padding) <= {0} and len(msg.padding) < block


def test_encrypted_framing_with_a_real_cipher():
    """The framing contract with the engine: encrypt everything after the 28-byte header in
    place (CBC keeps the length the header already counts), decrypt, decode."""
    import os

    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key, iv = os.urandom(16), os.urandom(16)
    header, payloads = EXAMPLES["push"]
    plain = encode_message(header, payloads, block_size=16)
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    wire = plain[:28] + enc.update(plain[28:]) + enc.finalize()
    h, np, length = decode_header(wire)
    assert h.encrypted and length == len(wire) == len(plain)
    dec = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    msg = decode_message(wire[:28] + dec.update(wire[28:length]) + dec.finalize(), block_size=16)
    assert msg.payloads == payloads
