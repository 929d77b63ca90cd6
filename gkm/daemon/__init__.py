"""msecd, the msec daemon, and msecctl, its control client.

* :mod:`gkm.daemon.adapter`: the thin asyncio shell around one sans-I/O engine (UDP sockets,
  one ``call_at`` re-armed when ``get_timer()`` changes);
* :mod:`gkm.daemon.control`: the root-only Unix control socket speaking JSON lines;
* :mod:`gkm.daemon.daemon`: the daemon's life cycle, reload, the control requests, status;
* :mod:`gkm.daemon.keyserver`: the key server role's shell; :mod:`gkm.daemon.member`: the
  member role's shell (one session per member group);
* :mod:`gkm.daemon.report`: what logs and replies show of addresses and TEKs (never keys);
* :mod:`gkm.daemon.activity`: event counts and the ``msecctl monitor`` subscribers;
  :mod:`gkm.daemon.metrics`: the Prometheus endpoint (``[daemon] metrics_listen``);
* :mod:`gkm.daemon.engines`: the only place that constructs `gkm.gdoi` engines and the
  `xfrm.groupsa` installer;
* :mod:`gkm.daemon.config_edit`: msecctl's configuration changes (drop-ins) and ``reload --check``;
* :mod:`gkm.daemon.__main__`: ``msecd`` (console script); :mod:`gkm.daemon.ctl`: ``msecctl``
  (:mod:`gkm.daemon.completion`: its bash completion).
"""
