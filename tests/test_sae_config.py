"""SAEConfig validation: bad settings are refused with the field, the value and what is accepted."""

import pytest

from saelab.errors import ConfigError
from saelab.sae import ARCHITECTURES, SAEConfig, make_sae
from saelab.sae.config import default_k_aux


def test_unknown_architecture_lists_the_accepted_ones():
    with pytest.raises(ConfigError) as info:
        SAEConfig("resnet", d_in=8, d_sae=16)
    message = str(info.value)
    assert "'resnet'" in message
    for arch in ARCHITECTURES:
        assert arch in message


@pytest.mark.parametrize("field,value", [("d_in", 0), ("d_sae", -3), ("d_in", 2.5)])
def test_non_positive_or_fractional_sizes_are_refused(field, value):
    kwargs = {"d_in": 8, "d_sae": 16, field: value}
    with pytest.raises(ConfigError, match=field):
        SAEConfig("relu", **kwargs)


def test_k_larger_than_d_sae_is_refused_with_the_range():
    with pytest.raises(ConfigError) as info:
        SAEConfig("topk", d_in=8, d_sae=16, k=17)
    assert "k=17" in str(info.value) and "16" in str(info.value)


def test_k_defaults_to_32_capped_at_d_sae():
    for arch in ("topk", "batchtopk", "matryoshka_batchtopk"):
        assert SAEConfig(arch, d_in=8, d_sae=1024).k == 32
        assert SAEConfig(arch, d_in=8, d_sae=16).k == 16


def test_settings_of_other_architectures_are_refused():
    with pytest.raises(ConfigError, match="k=4 is not used by architecture 'relu'"):
        SAEConfig("relu", d_in=8, d_sae=16, k=4)
    with pytest.raises(ConfigError, match="l1_coefficient"):
        SAEConfig("jumprelu", d_in=8, d_sae=16, l1_coefficient=0.1)
    with pytest.raises(ConfigError, match="l0_coefficient"):
        SAEConfig("relu", d_in=8, d_sae=16, l0_coefficient=0.1)


def test_fixed_unit_norm_architectures_refuse_a_free_decoder():
    with pytest.raises(ConfigError, match="unit_norm_decoder=False"):
        SAEConfig("topk", d_in=8, d_sae=16, k=2, unit_norm_decoder=False)
    with pytest.raises(ConfigError, match="apply_b_dec_to_input"):
        SAEConfig("tied", d_in=8, d_sae=16, apply_b_dec_to_input=True)


def test_defaults_follow_the_papers():
    jump = SAEConfig("jumprelu", d_in=8, d_sae=16)
    assert (jump.jumprelu_bandwidth, jump.jumprelu_init_threshold, jump.unit_norm_decoder) == (0.001, 0.001, True)
    topk = SAEConfig("topk", d_in=768, d_sae=24576, k=32)
    assert topk.aux_coefficient == pytest.approx(1 / 32)
    assert topk.k_aux == 512 and default_k_aux(64, 1024) == 32 and default_k_aux(768, 100) == 100
    relu = SAEConfig("relu", d_in=8, d_sae=16)
    assert relu.unit_norm_decoder is False and relu.decoder_init_norm == 0.1
    assert SAEConfig("batchtopk", d_in=8, d_sae=16, k=2).batchtopk_threshold_beta == 0.999


def test_names_default_from_hook_and_must_be_folder_safe():
    cfg = SAEConfig("topk", d_in=8, d_sae=16, k=2, hook_name="blocks.1.attn.hook_z")
    assert cfg.name == "blocks.1.attn.hook_z.topk.16"
    with pytest.raises(ConfigError, match="name="):
        SAEConfig("relu", d_in=8, d_sae=16, name="a/b")


def test_from_dict_round_trip_and_unknown_keys():
    cfg = SAEConfig("gated", d_in=8, d_sae=16, hook_name="h", l1_coefficient=0.5)
    assert SAEConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError) as info:
        SAEConfig.from_dict({"architecture": "relu", "d_in": 8, "d_sae": 16, "l1_coef": 1.0})
    assert "l1_coef" in str(info.value) and "l1_coefficient" in str(info.value)
    with pytest.raises(ConfigError, match="missing 'd_sae'"):
        SAEConfig.from_dict({"architecture": "relu", "d_in": 8})


def test_make_sae_builds_every_architecture_deterministically():
    for arch in ARCHITECTURES:
        extra = {"k": 2} if arch in ("topk", "batchtopk") else {}
        cfg = SAEConfig(arch, d_in=8, d_sae=16, **extra)
        a, b = make_sae(cfg, seed=3), make_sae(cfg, seed=3)
        assert a.architecture == arch
        for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
            assert pa.equal(pb), name
