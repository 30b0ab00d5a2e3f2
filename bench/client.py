"""Teacher client: requests/s of ``LLMClient.chat_many`` against the embedded teacher server.

Method: the user turns of the broad imitation set (the `imitate-dataset` workload), unique,
sent once per measurement with an empty temporary cache (every request goes over HTTP to
the server in the same process), at each concurrency; then the same prompts again from
the disk cache (no request), which is what a re-run or a resumed run pays.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from .common import median, say

CONCURRENCY = (1, 4, 16, 64)


def prompts(world: Path, n: int) -> list[tuple[str, list[dict]]]:
    from imitation_gap.core.io import read_jsonl

    seen, out = set(), []
    for path in sorted((world / "data/imitation").glob("*/*.jsonl")):
        for r in read_jsonl(path):
            q = next(m["content"] for m in r["messages"] if m["role"] == "user")
            if q not in seen:
                seen.add(q)
                out.append((f"q{len(out)}", [{"role": "user", "content": q}]))
    if len(out) < n:
        raise RuntimeError(f"only {len(out)} distinct prompts for the client bench (need {n})")
    return out[:n]


def run(world: Path, p, reps: int, n: int, quick: bool = False) -> dict:
    from imitation_gap.llm.client import LLMClient
    from imitation_gap.worlds.embedded.teacher import embedded_endpoint

    items = prompts(world, n)
    sampling = {"temperature": p.teacher.temperature, "max_tokens": p.teacher.max_tokens}
    conc = (1, 16) if quick else CONCURRENCY
    res: dict = {"n_requests": n, "concurrency": {}, "cache_hit": [], "sampling": sampling}
    with embedded_endpoint(world / "data/raw/world.json", world / "data/raw/tokenizer") as url:
        for c in conc:
            rates = []
            for rep in range(reps):
                with tempfile.TemporaryDirectory() as cache:
                    cl = LLMClient(url, p.teacher.model, cache_dir=Path(cache), concurrency=c, progress=False,
                                   timeout=p.teacher.timeout)
                    t = time.perf_counter()
                    got = cl.chat_many(items, sampling)
                    dt = time.perf_counter() - t
                    assert len(got) == n and cl.stats.requests >= n, cl.stats.as_dict()
                    rates.append(n / dt)
                    if c == max(conc):
                        # the same prompts again: every one a cache hit (read + checksum, no request)
                        t = time.perf_counter()
                        again = cl.chat_many(items, sampling)
                        dt = time.perf_counter() - t
                        assert len(again) == n
                        res["cache_hit"].append(n / dt)
            res["concurrency"][str(c)] = {"runs": rates, "rps": median(rates)}
            say(f"client: concurrency {c}: {median(rates):.0f} requests/s")
    res["cache_hit_rps"] = median(res["cache_hit"])
    say(f"client: cache hits: {res['cache_hit_rps']:.0f} requests/s")
    return res
