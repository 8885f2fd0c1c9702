"""PruMerge+ at a fixed budget: IQR outliers, the uniform fill, the attention-weighted merge,
and the final layer's keys that the merge compares."""

import numpy as np
import torch

from hired.strategies.prumerge import iqr_outliers, merge_dropped, prumerge_plus_tokens
from hired.selection import spread_tokens
from hired.vision import VisionTower, encode

from .conftest import noise_image

ALL = torch.ones(576, dtype=torch.bool)


def test_iqr_outliers_match_numpy_on_the_valid_tokens():
    rng = np.random.default_rng(0)
    scores = rng.lognormal(size=576)
    valid = np.zeros((24, 24), dtype=bool)
    valid[3:20] = True  # padding rows are left out of the quartiles
    valid = valid.flatten()
    q1, q3 = np.percentile(scores[valid], [25, 75])
    expected = valid & (scores > q3 + 1.5 * (q3 - q1))
    assert expected.sum() > 0
    assert iqr_outliers(torch.tensor(scores), torch.tensor(valid)).numpy().tolist() == expected.tolist()
    # Quartiles over all 576 tokens would flag another set, so padding really is left out above.
    q1_all, q3_all = np.percentile(scores, [25, 75])
    assert (valid & (scores > q3_all + 1.5 * (q3_all - q1_all))).tolist() != expected.tolist()


def test_iqr_outliers_flat_scores_and_padding():
    scores = torch.ones(576)
    scores[7] = 5.0
    assert iqr_outliers(scores, ALL).nonzero().flatten().tolist() == [7]
    valid = ALL.clone()
    valid[7] = False
    assert not iqr_outliers(scores, valid).any()  # a padding token is never an outlier
    assert not iqr_outliers(scores, torch.zeros(576, dtype=torch.bool)).any()


def peaked_scores():
    scores = torch.linspace(0, 1, 576)[torch.randperm(576, generator=torch.Generator().manual_seed(0))]
    peaks = [30, 300, 555]
    scores[peaks] = torch.tensor([50.0, 70.0, 60.0])
    return scores, peaks


def test_prumerge_plus_keeps_every_outlier_then_spreads_the_rest():
    scores, peaks = peaked_scores()
    assert iqr_outliers(scores, ALL).nonzero().flatten().tolist() == peaks
    kept = prumerge_plus_tokens(scores, ALL, 20)
    assert len(kept) == 20 and set(peaks) <= set(kept.tolist()) and (kept[1:] > kept[:-1]).all()
    # The 17 others are the even spread over the remaining tokens.
    excluded = torch.zeros(576, dtype=torch.bool)
    excluded[peaks] = True
    assert set(kept.tolist()) - set(peaks) == set(spread_tokens(ALL, 17, excluded).tolist())


def test_prumerge_plus_takes_the_top_outliers_when_they_exceed_the_share():
    scores, _ = peaked_scores()
    assert prumerge_plus_tokens(scores, ALL, 2).tolist() == [300, 555]  # attention 70 and 60, not 50
    assert prumerge_plus_tokens(scores, ALL, 0).tolist() == []


def test_prumerge_plus_never_keeps_padding():
    scores, _ = peaked_scores()
    valid = torch.zeros(24, 24, dtype=torch.bool)
    valid[:, 5:15] = True
    valid = valid.flatten()
    kept = prumerge_plus_tokens(scores, valid, 100)
    assert len(kept) == 100 and valid[kept].all()


def hand_example():
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [4.0, 0.0]])
    # Token 1 points towards token 0's key, token 2 towards token 3's. Token 3's key is long: by dot
    # product token 1 would join token 3 (0.44 * 10 > 0.9), by cosine it joins token 0.
    keys = torch.tensor([[1.0, 0.0], [0.9, 0.44], [0.1, 1.0], [0.0, 10.0]])
    weights = torch.tensor([1.0, 3.0, 1.0, 1.0])
    return features, keys, weights, torch.tensor([0, 3])


def test_merge_is_the_attention_weighted_average_of_each_kept_token_and_its_joiners():
    features, keys, weights, kept = hand_example()
    merged = merge_dropped(features, keys, weights, kept, torch.ones(4, dtype=torch.bool))
    # Token 0: (1 * [1, 0] + 3 * [0, 1]) / 4; token 3: (1 * [4, 0] + 1 * [2, 2]) / 2.
    torch.testing.assert_close(merged, torch.tensor([[0.25, 0.75], [3.0, 1.0]]))


def test_merge_ignores_padding_and_leaves_lonely_tokens_exactly_alone():
    features, keys, weights, kept = hand_example()
    valid = torch.tensor([True, True, False, True])  # token 2 is padding: it joins nobody
    merged = merge_dropped(features, keys, weights, kept, valid)
    assert torch.equal(merged[1], features[3])
    torch.testing.assert_close(merged[0], torch.tensor([0.25, 0.75]))
    # Nothing dropped: the kept features come back unchanged; nothing kept: an empty result.
    assert torch.equal(merge_dropped(features, keys, weights, torch.arange(4), valid), features)
    assert merge_dropped(features, keys, weights, torch.tensor([], dtype=torch.long), valid).shape == (0, 2)


def test_merge_keeps_the_features_dtype():
    features, keys, weights, kept = hand_example()
    merged = merge_dropped(features.half(), keys.half(), weights, kept, torch.ones(4, dtype=torch.bool))
    assert merged.dtype == torch.float16
    torch.testing.assert_close(merged.float(), torch.tensor([[0.25, 0.75], [3.0, 1.0]]))


def test_encode_returns_the_layers_keys_only_when_asked(tiny_next):
    model, processor = tiny_next
    pixels = processor(images=noise_image(480, 640), text="<image>", return_tensors="pt")["pixel_values"][0]
    tower = VisionTower.of(model.model.vision_tower)
    plain = encode(tower, pixels, [-2], [0, 2])
    assert plain.keys == {}
    with_keys = encode(tower, pixels, [-2], [2], key_layers=[2])
    with torch.no_grad():
        hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[2]
        layer = tower.layers[2]
        reference = layer.self_attn.k_proj(layer.layer_norm1(hidden))[:, 1:]
    assert with_keys.keys[2].shape == (pixels.shape[0], 576, 32)
    torch.testing.assert_close(with_keys.keys[2], reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(with_keys.cls_attention[2], plain.cls_attention[2])
    # Keys of a layer whose attention is not computed can be asked for too.
    assert set(encode(tower, pixels, [-2], [], key_layers=[1]).keys) == {1}
