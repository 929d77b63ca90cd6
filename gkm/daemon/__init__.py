"""msecd, the msec daemon, and msecctl, its control client.

* :mod:`gkm.daemon.adapter`: the thin asyncio shell around one sans-I/O engine (UDP sockets,
  one ``call_at`` re-armed when ``get_timer()`` changes);
* :mod:`gkm.daemon.control`: the root-only Unix control socket speaking JSON lines;
* :mod:`gkm.daemon.daemon`: roles (key server, member), reload, status;
* :mod:`gkm.daemon.engines`: the only place that constructs `gkm.gdoi` engines and the
  `xfrm.groupsa` installer;
* :mod:`gkm.daemon.__main__`: ``msecd`` (console script); :mod:`gkm.daemon.ctl`: ``msecctl``.
"""
