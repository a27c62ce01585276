"""Episodes: shapes, distinct classes, labels that match the images, seeded reproducibility, rotations."""
import pytest
import torch

from matchnet.data import FewShotSplit
from matchnet.episodes import EpisodeSampler, evaluation_episodes, rotate


def toy_split(classes: int = 12, per_class: int = 20, rotations: bool = True) -> FewShotSplit:
    """Every image's pixels encode (source, drawing) so gathered images can be traced back."""
    sources = classes // 4 if rotations else classes
    images = torch.zeros(sources, per_class, 28, 28, dtype=torch.uint8)
    for s in range(sources):
        for d in range(per_class):
            images[s, d, 0, 0] = s + 1  # top-left pixel: the source, 1-based
            images[s, d, 0, 1] = d + 1
    if rotations:
        src = torch.arange(sources).repeat_interleave(4)
        rot = torch.arange(4).repeat(sources)
    else:
        src, rot = torch.arange(sources), torch.zeros(sources, dtype=torch.long)
    return FewShotSplit(images, src, rot, [f"c{i}" for i in range(len(src))])


def test_shapes_labels_and_distinct_classes():
    split = toy_split(classes=40)
    ep = EpisodeSampler(split, way=5, shot=2, query=3, seed=0).sample(7)
    assert ep.support.shape == (7, 10, 1, 28, 28) and ep.query.shape == (7, 15, 1, 28, 28)
    assert ep.support.dtype == torch.float32 and 0 <= ep.support.min() and ep.support.max() <= 1
    assert ep.support_labels[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert ep.query_labels[0].tolist() == sum(([c] * 3 for c in range(5)), [])
    for e in range(7):
        assert len(set(ep.classes[e].tolist())) == 5


def test_support_and_query_drawings_are_disjoint_and_match_their_class():
    split = toy_split(classes=8, rotations=False)
    ep = EpisodeSampler(split, way=4, shot=3, query=5, seed=1).sample(20)
    sup = (ep.support[:, :, 0, 0, :2] * 255).round().long()  # [E, S, 2]: source+1, drawing+1
    qry = (ep.query[:, :, 0, 0, :2] * 255).round().long()
    for e in range(20):
        for c in range(4):
            source = int(split.source[ep.classes[e, c]]) + 1
            s_pix, q_pix = sup[e][ep.support_labels[e] == c], qry[e][ep.query_labels[e] == c]
            assert (s_pix[:, 0] == source).all() and (q_pix[:, 0] == source).all()
            drawings = s_pix[:, 1].tolist() + q_pix[:, 1].tolist()
            assert len(set(drawings)) == 8  # no drawing is both a support example and a query


def test_same_seed_same_episodes_other_seed_other_episodes():
    split = toy_split(classes=40)
    a = list(evaluation_episodes(split, 5, 1, 2, episodes=30, seed=3, batch=7))
    b = list(evaluation_episodes(split, 5, 1, 2, episodes=30, seed=3, batch=30))  # batching must not matter
    c = list(evaluation_episodes(split, 5, 1, 2, episodes=30, seed=4, batch=30))
    cat = lambda eps: torch.cat([e.classes for e in eps])  # noqa: E731
    assert torch.equal(cat(a), cat(b))
    assert torch.equal(torch.cat([e.query for e in a]), torch.cat([e.query for e in b]))
    assert not torch.equal(cat(a), cat(c))
    s1 = EpisodeSampler(split, 5, 1, 2, seed=9)
    s2 = EpisodeSampler(split, 5, 1, 2, seed=9)
    assert torch.equal(s1.sample(4).support, s2.sample(4).support)


def test_too_many_ways_or_shots_is_a_clear_error():
    split = toy_split(classes=8)
    with pytest.raises(ValueError, match="this split has 8"):
        EpisodeSampler(split, way=9, shot=1, query=1).sample()
    with pytest.raises(ValueError, match="20 examples per class"):
        EpisodeSampler(split, way=2, shot=10, query=11).sample()


def test_rotation_turns_an_asymmetric_image_counter_clockwise():
    img = torch.zeros(1, 3, 3, dtype=torch.uint8)
    img[0, 0, 1] = 1  # top middle ...
    img[0, 0, 2] = 2  # ... and top right: no symmetry
    turned = rotate(img.expand(4, 3, 3), torch.tensor([0, 1, 2, 3]))
    assert torch.equal(turned[0], img[0])
    # a quarter turn counter-clockwise moves the top-right corner to the top-left
    assert turned[1].tolist() == [[2, 0, 0], [1, 0, 0], [0, 0, 0]]
    assert turned[2].tolist() == [[0, 0, 0], [0, 0, 0], [2, 1, 0]]
    assert torch.equal(turned[3], torch.rot90(img[0], 3))


def test_sampler_applies_the_class_rotation():
    split = toy_split(classes=4)  # one source, four rotations
    ep = EpisodeSampler(split, way=4, shot=1, query=0, seed=0).sample(1)
    for c in range(4):
        rot = int(split.rotation[ep.classes[0, c]])
        source = split.images[0, :, :, :].float() / 255
        assert any(torch.equal(torch.rot90(source[d], rot), ep.support[0, c, 0]) for d in range(20))
