from domaintune.training.batching import epoch_batches, inference_batches


def test_length_grouped_batches_cover_everything_once_and_are_reproducible():
    lengths = [((i * 37) % 97) + 1 for i in range(1000)]
    a = epoch_batches(lengths, 32, seed=3, epoch=1)
    assert sorted(i for b in a for i in b) == list(range(1000))
    assert a == epoch_batches(lengths, 32, seed=3, epoch=1)
    assert a != epoch_batches(lengths, 32, seed=3, epoch=2)
    # grouping cuts padding versus random batches
    pad = lambda bs: sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in bs)  # noqa: E731
    assert pad(a) < 0.3 * pad(epoch_batches(lengths, 32, seed=3, epoch=1, group_by_length=False))


def test_inference_batches_longest_first():
    lengths = [3, 9, 1, 7]
    assert inference_batches(lengths, 2) == [[1, 3], [0, 2]]
