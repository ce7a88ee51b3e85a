"""The checker must catch each anomaly it claims to catch: a clean history passes,
and each made-up anomaly fails exactly the check meant to see it."""

from __future__ import annotations

import copy

import pytest

from tests.chaos.checker import body_key, check

BODY = {k: f"{k}:" + "x" * 120 for k in "abcdef"}


def op(f, start, end, type_="ok", result=None, **value):
    o = {"p": 0, "f": f, "value": value, "start": start, "end": end, "type": type_}
    if type_ == "ok":
        o["result"] = result
    return o


def send(key, start, end, mid=None, type_="ok", frm="user0", to="user1"):
    return op("send", start, end, type_, {"id": mid} if type_ == "ok" else None, **{"from": frm, "to": to,
                                                                                     "body": BODY[key]})


def clean() -> tuple[list[dict], dict[int, dict]]:
    ops = [
        op("register", 0.0, 0.1, name="user0"),
        op("register", 0.0, 0.1, name="user1"),
        op("register", 0.0, 0.1, name="temp1"),
        send("a", 1.0, 1.1, 10),
        send("b", 1.2, 1.3, 11, frm="user1", to="user0"),
        send("c", 1.25, 1.5, type_="unknown"),              # applied, as id 12
        send("d", 1.6, 1.7, type_="fail"),                  # refused: never applied
        send("e", 1.8, 1.9, 14),
        op("delete", 2.0, 2.1, user="user0", ids=[14]),
        send("f", 2.2, 2.3, 15, frm="temp1", to="user0"),
        op("delete_account", 2.4, 2.5, user="temp1"),
        op("register", 2.6, 2.7, "fail", name="user1"),     # taken
        op("history", 3.0, 3.1, result=[[12, "user0", "user1", body_key(BODY["c"])],
                                        [11, "user1", "user0", body_key(BODY["b"])],
                                        [10, "user0", "user1", body_key(BODY["a"])]], user="user0", peer="user1",
           limit=100),
    ]
    state = {"users": ["user0", "user1"],
             "messages": {10: ["user0", "user1", BODY["a"]], 11: ["user1", "user0", BODY["b"]],
                          12: ["user0", "user1", BODY["c"]]},
             "applied": 30, "digest": "00ff"}
    return ops, {i: copy.deepcopy(state) for i in (1, 2, 3)}


def failing(ops, replicas) -> set[str]:
    return {c.name.split(",")[0].split(" ")[0] for c in check(ops, replicas) if not c.ok}


def test_a_clean_history_passes_every_check():
    ops, replicas = clean()
    results = check(ops, replicas)
    assert all(c.ok for c in results), [c.line() for c in results]
    assert all(c.checked > 0 for c in results)


def lose_acked(ops, reps):
    for r in reps.values():
        del r["messages"][10]


def duplicate(ops, reps):
    for r in reps.values():
        r["messages"][20] = ["user0", "user1", BODY["a"]]


def refused_present(ops, reps):
    for r in reps.values():
        r["messages"][13] = ["user0", "user1", BODY["d"]]


def phantom(ops, reps):
    for r in reps.values():
        r["messages"][16] = ["user1", "user0", "never sent"]


def wrong_id(ops, reps):
    for r in reps.values():
        r["messages"][17] = r["messages"].pop(11)


def out_of_order(ops, reps):
    ops[4]["result"]["id"] = 9  # began after id 10 was acknowledged, yet ordered before it
    for r in reps.values():
        r["messages"][9] = r["messages"].pop(11)
    ops[-1]["result"][1][0] = 9


def replicas_disagree_on_order(ops, reps):
    reps[2]["messages"][9] = reps[2]["messages"].pop(11)


def stale_read(ops, reps):
    ops[-1]["result"] = ops[-1]["result"][:1] + ops[-1]["result"][2:]  # misses id 11, acked at 1.3


def read_shows_deleted(ops, reps):
    ops.insert(9, op("delete", 2.0, 2.1, user="user0", ids=[10]))
    for r in reps.values():
        del r["messages"][10]


def read_invents(ops, reps):
    ops[-1]["result"].append([8, "user0", "user1", body_key("never sent")])


def name_twice(ops, reps):
    ops.append(op("register", 3.0, 3.2, name="USER0"))


def deleted_account_lives(ops, reps):
    for r in reps.values():
        r["users"].append("temp1")


def digest_differs(ops, reps):
    reps[3]["digest"] = "0abc"


def contents_differ(ops, reps):
    reps[3]["users"].append("ghost1")


@pytest.mark.parametrize("mutate, expect", [
    (lose_acked, {"acknowledged"}),
    (duplicate, {"acknowledged"}),
    (refused_present, {"acknowledged"}),
    (phantom, {"nothing"}),
    (wrong_id, {"acknowledged"}),
    (out_of_order, {"one"}),
    (replicas_disagree_on_order, {"one", "replicas", "acknowledged"}),
    (stale_read, {"reads"}),
    (read_shows_deleted, {"reads"}),
    (read_invents, {"reads"}),
    (name_twice, {"names"}),
    (deleted_account_lives, {"names"}),
    (digest_differs, {"replicas"}),
    (contents_differ, {"replicas"}),
])
def test_each_anomaly_is_caught(mutate, expect):
    ops, replicas = clean()
    mutate(ops, replicas)
    assert failing(ops, replicas) == expect
