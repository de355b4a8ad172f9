"""Reading nf_tables' ruleset generation over plain netlink (node.policy.generation)."""

import struct

import pytest

from node.policy import generation


# The kernel's numbers (linux/netfilter/nf_tables.h, netlink.h), written out
# here so that a wrong constant in the module fails these tests.
NEWGEN = 10 << 8 | 15           # NFNL_SUBSYS_NFTABLES, NFT_MSG_NEWGEN
GEN_ID, ERROR = 1, 2            # NFTA_GEN_ID, NLMSG_ERROR


def answer(seq, gen_id, kind=NEWGEN):
    attrs = struct.pack("=HH", 8, GEN_ID) + struct.pack(">I", gen_id) + \
        struct.pack("=HH", 8, 2) + struct.pack(">I", 77)          # then the process id
    body = struct.pack("=BBH", 0, 0, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), kind, 0, seq, 0) + body


def test_the_request_asks_nf_tables_for_its_generation():
    length, kind, flags, seq, _ = struct.unpack_from("=IHHII", generation.request(7))
    assert (length, kind, flags, seq) == (20, 10 << 8 | 16, 1, 7)


def test_the_generation_is_read_from_the_answer_to_this_request():
    assert generation.parse(answer(3, 123456), 3) == 123456
    # An answer to an earlier request (one that timed out) is not this one's.
    with pytest.raises(ValueError):
        generation.parse(answer(2, 1), 3)


def test_a_refusal_is_an_error_not_a_generation():
    refusal = struct.pack("=IHHII", 36, ERROR, 0, 4, 0) + \
        struct.pack("=i", -93) + bytes(16)
    with pytest.raises(OSError):
        generation.parse(refusal, 4)

