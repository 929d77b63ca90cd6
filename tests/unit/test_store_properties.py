"""Property tests of gkm.store: SEQ and key states survive any interleaving of operations and
reopenings."""

from __future__ import annotations

import os
import tempfile

from hypothesis import given, settings
from hypothesis import strategies as st

from gkm.store import KeyState, KeyStore, StoreError

OPS = st.lists(st.sampled_from(["seq", "seq", "seq", "reopen", "new_kek", "add_tek", "rotate", "purge"]), max_size=25)


@settings(max_examples=30, deadline=None)
@given(ops=OPS)
def test_seq_and_keys_under_any_history(ops):
    with tempfile.TemporaryDirectory() as tmp:
        state = os.path.join(tmp, "state")
        s = KeyStore(state)
        s.add_group(1, b"\0" * 32)
        s.add_kek(1, b"\x01" * 16, "aes", os.urandom(32), created=0, expires=10, state=KeyState.CURRENT)
        model_seq = {b"\x01" * 16: 0}
        current_kek = b"\x01" * 16
        teks: dict[int, tuple[bytes, KeyState]] = {}
        spi = 0x100
        now = 0
        try:
            for op in ops:
                now += 1
                if op == "seq":
                    model_seq[current_kek] += 1
                    assert s.next_seq(1) == model_seq[current_kek]
                elif op == "reopen":
                    s.close()
                    s = KeyStore(state)
                elif op == "new_kek":
                    current_kek = os.urandom(16)
                    s.add_kek(1, current_kek, "aes", os.urandom(32), created=now, expires=now + 10)
                    s.activate_kek(1, current_kek)
                    model_seq[current_kek] = 0
                elif op == "add_tek":
                    key = os.urandom(32)
                    s.add_tek(1, spi, "aes-gcm-16", key, created=now, expires=now + 3)
                    teks[spi] = (key, KeyState.NEXT)
                    spi += 1
                elif op == "rotate":
                    if any(st_ is KeyState.NEXT for _, st_ in teks.values()):
                        s.rotate_teks(1)
                        for k, (key, st_) in list(teks.items()):
                            teks[k] = (key, {KeyState.CURRENT: KeyState.OLD, KeyState.NEXT: KeyState.CURRENT}.get(st_, st_))
                    else:
                        try:
                            s.rotate_teks(1)
                        except StoreError:
                            pass
                        else:
                            raise AssertionError("rotation without a next TEK")
                elif op == "purge":
                    gone = s.purge_teks(1, now)
                    for k in gone:
                        assert teks.pop(k)[1] is KeyState.OLD
                # the store agrees with the model after every step
                assert s.current_seq(1) == model_seq[current_kek]
                assert s.current_kek(1).spi == current_kek
                assert {t.spi: (t.key, t.state) for t in s.teks(1)} == teks
        finally:
            s.close()
