"""Reading /metrics in tests: scrape it, and index its samples by name and labels."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


async def scrape(http, url: str) -> str:  # type: ignore[no-untyped-def]
    async with http.get(f"{url}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        return await resp.text()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out
