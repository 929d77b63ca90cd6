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
