"""MicroBatcher: a swap under load labels every answer with the predictor that really made it."""

import asyncio
import threading

from domaintune.serving.batching import MicroBatcher


class Stamp:
    """A predictor whose every prediction says which one it is (the batcher is what is under test)."""

    def __init__(self, name: str):
        self.served_as = (name, None)
        self.calls = 0

    def predict(self, texts, top_k=1):
        self.calls += 1
        threading.Event().wait(0.002)  # a model call takes time, so swaps land between and during batches
        return [{"label": self.served_as[0], "text": t} for t in texts]


def test_swap_under_load_reports_the_predictor_that_answered():
    old, new = Stamp("v1"), Stamp("v2")
    batcher = MicroBatcher(old, "m", max_batch=4, max_wait_ms=0, max_queue=10_000)

    async def main():
        async def one(i):
            preds, used = await batcher.submit([f"t{i}", f"u{i}"], with_predictor=True)
            return preds, used

        tasks = [asyncio.create_task(one(i)) for i in range(200)]
        while old.calls < 5:
            await asyncio.sleep(0.001)
        batcher.swap(new)
        return await asyncio.gather(*tasks)

    try:
        results = asyncio.run(main())
    finally:
        batcher.close()
    assert old.calls and new.calls  # the swap landed mid-stream
    for i, (preds, used) in enumerate(results):
        assert [p["text"] for p in preds] == [f"t{i}", f"u{i}"]
        assert {p["label"] for p in preds} == {used.served_as[0]}
    labels = [used.served_as[0] for _, used in results]
    first_new = labels.index("v2")
    assert set(labels[first_new:]) == {"v2"}  # submitted in order: once switched, never back


def test_plain_submit_returns_predictions_only():
    batcher = MicroBatcher(Stamp("v1"), "m", max_batch=8, max_wait_ms=0)
    try:
        preds = asyncio.run(batcher.submit(["a", "b"]))
    finally:
        batcher.close()
    assert [p["text"] for p in preds] == ["a", "b"]
