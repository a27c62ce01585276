"""bench/app_crowd.py's own checks (no server): every client sends labels no other client sends, and a reply
that answers another request (another client's, or another shape's) is counted as cross-talk."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("app_crowd", ROOT / "bench" / "app_crowd.py")
crowd = importlib.util.module_from_spec(spec)
spec.loader.exec_module(crowd)


def reply_to(request: dict) -> dict:
    """What /classify answers (its keys as demo/handlers.py returns them): predicts the first query's class."""
    n_s, n_q = len(request["support"]), len(request["queries"])
    return {"labels": [request["labels"][0]] * n_q, "support_labels": list(request["labels"]),
            "attention": [[1.0 / n_s] * n_s for _ in range(n_q)]}


def test_requests_are_each_clients_own_and_cover_the_mix():
    chars = crowd.characters()
    assert len(chars) == 20 and all(len(c) == 6 for c in chars)
    a = [crowd.request_for(0, n, chars) for n in range(16)]
    b = [crowd.request_for(1, n, chars) for n in range(16)]
    assert not {l for r in a for l in r["labels"]} & {l for r in b for l in r["labels"]}
    assert {r["kind"] for r in a} == {m[0] for m in crowd.MIX}
    for r in a:
        assert len(r["labels"]) == len(r["support"]) and all(p.is_file() for p in r["support"] + r["queries"])
        assert not set(r["support"]) & set(r["queries"])  # a query is never one of the support images


def test_check_flags_replies_to_other_requests():
    chars = crowd.characters()
    mine, other_client = crowd.request_for(0, 0, chars), crowd.request_for(1, 0, chars)
    other_shape = next(r for r in (crowd.request_for(0, n, chars) for n in range(16))
                       if len(r["queries"]) != len(mine["queries"]))
    assert crowd.check(reply_to(mine), mine) is None
    assert crowd.check(reply_to(other_client), mine) is not None
    assert crowd.check(reply_to(other_shape), mine) is not None
