"""Memory and compute estimates: hand-checked textbook answers, agreement with Keras on every
backbone, the liveness peak of a branching graph, the budget search and the remedies."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import replace

import keras
import pytest

from pipeline.backbones import BACKBONES
from pipeline.cli import main
from pipeline.config import Config, ConfigError, with_overrides
from pipeline.memory import (
    MemoryEstimate,
    estimate_for_run,
    estimate_layers,
    estimate_memory,
    max_batch,
    model_phases,
    rank_remedies,
    realistic_training,
    textbook_training,
)
from pipeline.memory.allocator import simulated_peak
from pipeline.memory.estimate import BUDGET_HEADROOM, allocator_chunk, kernel_rows, usable
from pipeline.memory.keras_graph import layers_from_model
from pipeline.memory.liveness import inference_peak, training_flops, training_peak
from pipeline.memory.spec import (
    SAVES_INPUTS,
    SAVES_OUTPUT,
    Layer,
    conv_backprop_scratch,
    parse_layers,
)
from pipeline.model import build_classifier, classifier_spec, freeze_for_phase, get_base
from pipeline.units import parse_quantity

EXERCISE = "conv3x3s2same:100,conv3x3s2same:200,conv3x3s2same:400"
ALEXNET = (
    "conv11x11s4valid:96,lrn,maxpool3x3s2,conv5x5:256,lrn,maxpool3x3s2,conv3x3:384,"
    "conv3x3:384,conv3x3:256,maxpool3x3s2,flatten,dense:4096,dense:4096,dense:1000"
)
# Small inputs keep every backbone quick; InceptionV3 needs 75, Xception 71.
SMALL_SIZE = {"inception_v3": 75, "xception": 75}


def _cfg(backbone: str = "small_cnn", **overrides: object) -> Config:
    size = SMALL_SIZE.get(backbone, 32)
    return with_overrides(
        Config(),
        {
            "model.backbone": backbone,
            "model.weights": "none",
            "input.image_size": size,
            **overrides,
        },
    )


def _keras_trainable(model: keras.Model) -> int:
    return sum(math.prod(w.shape) for w in model.trainable_weights)


# ----------------------------------------------------------------------------- the exercise


def test_three_layer_cnn_parameters_shapes_and_activations():
    rows = parse_layers("200x300x3", EXERCISE)
    # SAME padding, stride 2: each side is ceil(side / 2): 200x300 -> 100x150 -> 50x75 -> 25x38.
    assert [r.shape for r in rows] == [(200, 300, 3), (100, 150, 100), (50, 75, 200), (25, 38, 400)]
    # (kernel height x width x input channels + 1 bias) x filters:
    # (3*3*3+1)*100 = 2,800; (3*3*100+1)*200 = 180,200; (3*3*200+1)*400 = 720,400.
    assert [r.params for r in rows[1:]] == [2_800, 180_200, 720_400]
    assert sum(r.params for r in rows) == 903_400  # not 32,670,000: weights are shared
    # 100*150*100 + 50*75*200 + 25*38*400 = 1,500,000 + 750,000 + 380,000
    assert sum(r.size for r in rows[1:]) == 2_630_000
    assert "(3x3x100+1)x200 = 180,200" in rows[2].working


def test_three_layer_cnn_memory_float32():
    rows = parse_layers("200x300x3", EXERCISE)
    est = estimate_layers(rows, batch=50)
    # One image: the two largest consecutive maps (conv1 + conv2 = 1,500,000 + 750,000
    # values) x 4 B = 9,000,000 B, plus 903,400 x 4 = 3,613,600 B of parameters.
    assert est["inference"]["peak_values"] == 2_250_000
    assert est["inference"]["peak_at"] == ["conv1", "conv2"]
    assert est["inference"]["bytes"] == 12_613_600
    # Batch 50: 50 x 2,630,000 x 4 = 526,000,000 B of activations, 50 x 180,000 x 4 =
    # 36,000,000 B of input, 3,613,600 B of parameters (not multiplied by the batch).
    textbook = textbook_training(rows, 50)
    assert textbook == {
        "activations": 526_000_000,
        "input": 36_000_000,
        "parameters": 3_613_600,
        "total": 565_613_600,
    }
    assert est["parameter_bytes"] == {"float32": 3_613_600, "float16": 1_806_800, "int8": 903_400}


def test_three_layer_cnn_720x1280_int8_batch_20():
    rows = parse_layers("720x1280x3", EXERCISE)
    # 360x640x100 = 23,040,000; 180x320x200 = 11,520,000; 90x160x400 = 5,760,000 values.
    assert [r.size for r in rows[1:]] == [23_040_000, 11_520_000, 5_760_000]
    assert sum(r.params for r in rows) == 903_400  # parameters do not depend on the image
    est = estimate_layers(rows, batch=20, dtype="int8")
    # (23,040,000 + 11,520,000) x 1 B + 903,400 x 1 B
    assert est["inference"]["bytes"] == 35_463_400
    # 20 x (40,320,000 + 2,764,800 input) x 1 B + 903,400 B
    assert est["phases"]["all layers train"]["textbook"]["total"] == 862_599_400


def test_alexnet_style_stack_layer_by_layer():
    rows = {r.name: r for r in parse_layers("227x227x3", ALEXNET)}
    # VALID 11x11 stride 4: (227 - 11) // 4 + 1 = 55; max pool 3x3 stride 2: (55 - 3) // 2 + 1 = 27
    assert rows["conv1"].shape == (55, 55, 96) and rows["pool1"].shape == (27, 27, 96)
    assert rows["lrn1"].shape == (55, 55, 96) and rows["lrn1"].params == 0
    assert rows["pool3"].shape == (6, 6, 256) and rows["flatten1"].shape == (9216,)
    expected = {
        "conv1": (11 * 11 * 3 + 1) * 96,  # 34,944
        "conv2": (5 * 5 * 96 + 1) * 256,  # 614,656
        "conv3": (3 * 3 * 256 + 1) * 384,  # 885,120
        "conv4": (3 * 3 * 384 + 1) * 384,  # 1,327,488
        "conv5": (3 * 3 * 384 + 1) * 256,  # 884,992
        "fc1": (9216 + 1) * 4096,  # 37,752,832
        "fc2": (4096 + 1) * 4096,  # 16,781,312
        "fc3": (4096 + 1) * 1000,  # 4,097,000
    }
    assert {n: r.params for n, r in rows.items() if r.params} == expected
    assert sum(r.params for r in rows.values()) == 62_378_344
    # conv1 multiply-adds: 55*55*96 outputs x 11*11*3 = 105,415,200
    assert rows["conv1"].macs == 105_415_200
    # Inference peak: conv1 and its LRN output alive together, 2 x 290,400 values.
    peak, at = inference_peak(list(rows.values()))
    assert (peak, at) == (580_800, ["conv1", "lrn1"])


def test_training_peak_and_flops_of_the_chain():
    rows = parse_layers("200x300x3", EXERCISE)
    peak = training_peak(rows)
    # Kept for backward: each trainable conv's input (image 180,000, conv1 1,500,000,
    # conv2 750,000) = 2,430,000. Worst moment: conv2's backward step, with the image and
    # conv1 still kept (1,680,000) plus the gradients of conv2's output (750,000) and of
    # its input (1,500,000) = 3,930,000 values.
    assert peak["kept_values"] == 2_430_000
    assert peak["values"] == 3_930_000
    forward = sum(r.flops for r in rows)  # 2 x multiply-adds + one bias add per output
    assert forward == 2 * 1_399_500_000 + 2_630_000
    # + input gradients of conv2 and conv3 (conv1's input is the image) + weight gradients
    assert training_flops(rows) == forward + rows[2].flops + rows[3].flops + 2 * 1_399_500_000


def test_realistic_training_adds_gradients_optimizer_and_mixed_precision():
    rows = parse_layers("200x300x3", EXERCISE)
    fp32 = realistic_training(rows, 50, "float32", optimizer_slots=2, overhead=1.0)
    assert fp32["weights"] == 3_613_600
    assert fp32["optimizer"] == 2 * 3_613_600  # Adam: two values per trainable parameter
    pipeline = 1.5 * 180_000 * 4  # float32 input batches buffered by the input pipeline
    assert fp32["input_pipeline"] == pipeline
    assert fp32["per_image"] == 3_930_000 * 4 + pipeline
    # The peak is conv2's backward step: its own weight gradient, conv3's update running
    # beside it (conv3's gradient and Adam's two temporaries) and conv2's 27 MB im2col
    # buffer, which the allocator may hold in a chunk of twice it.
    assert fp32["gradients"] == (180_200 + 3 * 720_400) * 4
    assert rows[2].scratch == 27_000_000 and fp32["scratch"] == 54_000_000
    assert fp32["fixed"] == 3 * 3_613_600 + fp32["gradients"] + 54_000_000
    assert fp32["tensors_total"] == fp32["fixed"] + 50 * fp32["per_image"]
    mixed = realistic_training(rows, 50, "mixed_float16", optimizer_slots=2, overhead=1.0)
    assert mixed["per_image"] == 3_930_000 * 2 + pipeline  # float16 activations, float32 input
    # loss scaling holds every gradient; conv1's and conv2's float16 copies are alive
    # until their backward steps read them
    assert mixed["gradients"] == (180_200 + 720_400 + (2_800 + 180_200) // 2) * 4
    assert mixed["weights"] == fp32["weights"]  # float32 master weights
    assert mixed["weight_copies"] == 903_400 * 2
    assert realistic_training(rows, 50, overhead=1.5)["per_image"] == 1.5 * fp32["per_image"]


def test_adams_update_holds_two_temporaries_beside_the_gradient():
    # One Dense kernel trains: at a small batch the step's worst moment is its update,
    # measured at three times the kernel (the gradient, g - m beside g², m·alpha beside
    # sqrt(v)); loss scaling's held gradients meet the same update after the last of them,
    # when the step's float16 weight copies are freed (the backward pass read them last).
    rows = parse_layers("1x1x2048", "flatten,dense:1000")
    for precision in ("float32", "mixed_float16"):
        cost = realistic_training(rows, 2, precision, overhead=1.0)
        assert cost["gradients"] == 3 * rows[-1].trainable * 4
        assert cost["scratch"] == 0
        held = cost["weights"] + cost["optimizer"]
        assert cost["tensors_total"] == held + cost["gradients"] + 2 * cost["per_image"]


def test_the_peak_moment_depends_on_the_batch():
    # Only the last conv trains: the forward pass through the frozen ones holds the most
    # values per image but no gradient; conv3's backward holds its gradient and scratch.
    rows = parse_layers("200x300x3", EXERCISE)
    rows = [replace(r, trainable=0) if r.name != "conv3" else r for r in rows]
    moments = training_peak(rows)["moments"]
    assert (training_peak(rows)["forward_values"], 0, 0) in moments
    small, large = realistic_training(rows, 1), realistic_training(rows, 1000)
    # conv3's update: its weight gradient and Adam's two temporaries, beside its scratch
    assert small["gradients"] == 3 * 720_400 * 4
    assert small["scratch"] == 2 * rows[3].scratch
    assert large["gradients"] == large["scratch"] == 0  # the forward pass
    assert large["per_image"] > small["per_image"]
    # The largest batch for a budget follows the worst moment at every batch size.
    budget = realistic_training(rows, 64)["total"] / (1 - BUDGET_HEADROOM) + 1
    est = estimate_layers(rows, 8, phases={"p": rows}, budget=budget)
    assert est["phases"]["p"]["max_batch"] == 64


def test_convolution_scratch_fills_the_kernels_working_set_whatever_the_batch():
    # 64x64 output, 3x3x3 patches, 32 filters: images are taken until patches, output
    # gradients and kernel fill 30 MiB; the patches are the buffer.
    weight, inputs = conv_backprop_scratch(64 * 64, 9, 3, 32)
    unit = 64 * 64 * 27 + 64 * 64 * 32 + 27 * 32  # patches + output gradient + kernel
    assert weight == -(-(30 << 20) // 4 // unit) * 64 * 64 * 27 * 4
    assert 10 << 20 < weight <= 30 << 20  # whatever the batch: 33 images' patches
    assert inputs == 64 * 64 * 27 * 4  # one image at a time: enough work per thread
    assert allocator_chunk(weight) == 2 * weight and allocator_chunk(1000) == 1000


def test_eigen_max_pooling_backward_holds_an_argmax_and_an_output_copy():
    # conv (trainable) -> 2x2 max pool: the pool's backward (10x10x4 = 400 outputs) holds
    # its output copy and int64 argmax under Eigen's kernels, nothing under oneDNN's.
    rows = parse_layers("20x20x1", "conv3x3same:4,maxpool2x2")
    assert rows[2].eigen_workspace == 3 * 400
    eigen = training_peak(kernel_rows(rows, "eigen", "float32"))["backward_values"]
    onednn = training_peak(kernel_rows(rows, "onednn", "float32"))["backward_values"]
    # kept: the image (400: the conv's weight gradient reads it), the pool's input (1,600)
    # and output (400); gradients of both (2,000)
    assert (eigen, onednn) == (4_400 + 3 * 400, 4_400)


def test_onednn_float32_convolutions_keep_no_im2col_buffer_and_float16_ones_fall_back():
    rows = parse_layers("200x300x3", EXERCISE)
    eigen = realistic_training(rows, 50, overhead=1.0)
    onednn = realistic_training(rows, 50, overhead=1.0, kernels="onednn")
    assert eigen["scratch"] == 54_000_000 and onednn["scratch"] == 0
    assert onednn["tensors_total"] == eigen["tensors_total"] - 54_000_000
    assert onednn["per_image"] == eigen["per_image"]
    mixed = realistic_training(rows, 50, "mixed_float16", overhead=1.0, kernels="onednn")
    assert mixed["scratch"] == 54_000_000  # oneDNN's float16 kernels absent: Eigen's run
    with pytest.raises(ValueError, match="kernels must be one of eigen, onednn"):
        realistic_training(rows, 50, kernels="mkl")


def test_elementwise_layers_write_over_their_buffers():
    # conv (trainable: keeps the image) -> relu. Forward, relu writes over the conv output;
    # backward, relu's input gradient over its output gradient.
    chain = parse_layers("10x10x1", "conv3x3:4,relu")
    peak = training_peak(chain)
    assert peak["forward_values"] == 100 + 400  # not 100 + 400 + 400
    assert peak["backward_values"] == 100 + 400 + 400  # relu output kept + one gradient
    # A training-mode BatchNorm's backward holds two full-size temporaries at a time besides
    # its kept input and output gradient (the image needs no gradient); in inference mode it
    # is elementwise.
    bn = keras.Sequential([keras.Input((8, 8, 2)), keras.layers.BatchNormalization()])
    rows = layers_from_model(bn)
    assert (rows[1].inplace, rows[1].workspace) == (False, 2 * 128)
    assert training_peak(rows)["backward_values"] == 128 + 128 + 2 * 128
    bn.trainable = False
    assert layers_from_model(bn)[1].inplace


def test_a_relu_capped_at_6_keeps_its_output_and_another_cap_its_input():
    # Keras runs ReLU(6) as tf.nn.relu6, whose gradient reads the output (which the next
    # convolution keeps anyway); a cap of 5 is a clip whose gradient reads the input.
    def saves(cap: float) -> tuple[str, ...]:
        model = keras.Sequential([keras.Input((8, 8, 2)), keras.layers.ReLU(cap)])
        return layers_from_model(model)[1].saves

    assert saves(6.0) == (SAVES_OUTPUT,)
    assert saves(5.0) == (SAVES_INPUTS,)


def test_unknown_layer_token_lists_the_valid_forms():
    with pytest.raises(
        ValueError,
        match=r"Unknown layer 'conv3x3s2same' .*Valid forms: "
        r"conv\{K\}x\{K\}.*dense:\{N\}",
    ):
        parse_layers("32x32x3", "conv3x3s2same")
    with pytest.raises(ValueError, match="put flatten before it"):
        parse_layers("32x32x3", "dense:10")
    with pytest.raises(ValueError, match="HEIGHTxWIDTHxCHANNELS"):
        parse_layers("32by32", "relu")


# ----------------------------------------------------------------------------- Keras models


def test_keras_sequential_matches_the_layer_spec():
    model = keras.Sequential(
        [
            keras.Input((200, 300, 3)),
            keras.layers.Conv2D(100, 3, strides=2, padding="same"),
            keras.layers.Conv2D(200, 3, strides=2, padding="same"),
            keras.layers.Conv2D(400, 3, strides=2, padding="same"),
        ]
    )
    rows, spec = layers_from_model(model), parse_layers("200x300x3", EXERCISE)
    assert [r.shape for r in rows] == [r.shape for r in spec]
    assert [r.params for r in rows] == [r.params for r in spec]
    assert [r.macs for r in rows] == [r.macs for r in spec]
    assert inference_peak(rows)[0] == 2_250_000
    assert sum(r.params for r in rows) == model.count_params() == 903_400


@pytest.mark.parametrize("name", list(BACKBONES))
def test_parameters_match_keras_for_every_backbone(name):
    cfg = _cfg(name)
    model = build_classifier(classifier_spec(cfg), 5)
    phases, _ = model_phases(cfg, 5)
    for rows in phases.values():
        assert sum(r.params for r in rows) == model.count_params()
    phases_base, base = model_phases(cfg, 5, head=False)
    assert sum(r.params for r in next(iter(phases_base.values()))) == base.count_params()
    # Trainable counts follow freeze_for_phase exactly, phase by phase.
    for phase, rows in zip((1, 2), phases.values()):
        freeze_for_phase(model, classifier_spec(cfg), phase)
        assert sum(r.trainable for r in rows) == _keras_trainable(model)


def test_phase_one_and_two_differ_for_inception():
    cfg = _cfg("inception_v3", **{"input.batch_size": 8})
    est = estimate_for_run(cfg, 5)
    assert MemoryEstimate.from_json(json.loads(json.dumps(est.to_json()))) == est
    p1, p2 = est.training.values()
    assert p1.trainable == 2048 * 5 + 5  # phase 1: only the softmax head trains
    assert p2.trainable > p1.trainable
    assert p2.realistic_bytes > p1.realistic_bytes
    assert p1.textbook_bytes == p2.textbook_bytes  # the textbook keeps everything anyway
    assert est.params == build_classifier(classifier_spec(cfg), 5).count_params()
    assert (
        est.flops_per_image.train["phase 2: layers after mixed8 train"]
        > est.flops_per_image.forward
    )


def test_liveness_peak_on_a_branching_graph():
    # input 8x8x1 (64) -> a (256) -> two branches: b1 (128) and b2 (512) -> b2b (512),
    # concatenated into c (640). Keras runs input, a, b2, then b1 and b2b, then c.
    x = keras.Input((8, 8, 1))
    a = keras.layers.Conv2D(4, 1, name="a")(x)
    b1 = keras.layers.Conv2D(2, 1, name="b1")(a)
    b2 = keras.layers.Conv2D(8, 1, name="b2")(a)
    b2b = keras.layers.Conv2D(8, 1, name="b2b")(b2)
    c = keras.layers.Concatenate(name="c")([b1, b2b])
    rows = layers_from_model(keras.Model(x, c))
    assert [r.name for r in rows][:3] == ["input", "a", "b2"] and rows[-1].name == "c"
    # Freeing each tensor after its last reader: a stays alive until both branches have read
    # it; at the concatenation b1 + b2b + c = 128 + 512 + 640 = 1,280 values are alive (b1
    # before b2b peaks at the same 1,280: a + b2 + b2b = 256 + 512 + 512). The largest pair
    # of consecutive rows (b2b + c = 1,152) would be wrong for this graph.
    peak, _ = inference_peak(rows)
    assert peak == 1_280
    assert max(r.size + s.size for r, s in itertools.pairwise(rows)) < peak


def test_under_mixed_precision_batchnorm_holds_a_float32_copy():
    """Keras 3's BatchNormalization casts float16 inputs to float32 and back: a frozen one
    is not written in place, and its forward and backward each hold a float32 copy (two
    float16 values per element) beside the float16 tensors."""
    frozen = keras.Sequential(
        [keras.Input((8, 8, 2)), keras.layers.Conv2D(4, 1), keras.layers.BatchNormalization()]
    )
    frozen.layers[1].trainable = False
    rows = layers_from_model(frozen)  # input 128, conv 256 (trains), bn 256 (frozen)
    fp32 = realistic_training(rows, 1, "float32", overhead=1.0, pipeline_batches=0)
    fp16 = realistic_training(rows, 1, "mixed_float16", overhead=1.0, pipeline_batches=0)
    assert fp32["peak"]["forward_values"] == 128 + 256  # conv output normalised in place
    # the image, the conv's float16 output and the float32 copy (2 values), then the copy
    # and the float16 result: the same 128 + 256 + 256 + 256 values either way
    assert fp16["peak"]["forward_values"] == 128 + 3 * 256
    # backward: the output gradient and its float32 copy, then the copy and the input
    # gradient, beside the image the conv's weight gradient reads
    assert fp16["peak"]["backward_values"] == 128 + 3 * 256


def test_liveness_on_hand_built_rows():
    rows = [
        Layer("input", "input", (10,)),
        Layer("left", "relu", (100,), inputs=(0,)),
        Layer("right", "relu", (30,), inputs=(0,)),
        Layer("sum", "add", (100,), inputs=(1, 2)),
    ]
    # input+left = 110; input+left+right = 140 (input freed after); left+right+sum = 230.
    assert inference_peak(rows) == (230, ["left", "right", "sum"])


def test_a_separable_convolutions_input_dies_before_its_output_is_made():
    # The depthwise output is made from the input, the pointwise output from it: at most two
    # of the three are alive, as TensorFlow runs the two ops.
    model = keras.Sequential(
        [keras.Input((16, 16, 8)), keras.layers.SeparableConv2D(8, 3, padding="same")]
    )
    rows = layers_from_model(model)
    assert rows[1].internal == rows[1].size == rows[0].size == 16 * 16 * 8
    assert inference_peak(rows)[0] == 2 * 16 * 16 * 8


def test_variables_say_which_initializer_draws_and_which_get_optimizer_slots():
    # Random initializers draw kernels (three buffers at creation); biases and BatchNorm's
    # variables are filled; the moving statistics get no optimizer slots.
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3),
            keras.layers.BatchNormalization(),
            keras.layers.DepthwiseConv2D(3, use_bias=False),
            keras.layers.SeparableConv2D(2, 1),
        ]
    )
    rows = layers_from_model(model)
    assert [[(v.drawn, v.trainable) for v in r.variables] for r in rows[1:]] == [
        [(True, True), (False, True)],
        [(False, True), (False, True), (False, False), (False, False)],
        [(True, True)],
        [(True, True), (True, True), (False, True)],
    ]
    assert all(sum(v.values for v in r.variables) == r.params for r in rows)


# ----------------------------------------------------------------------------- budgets


def test_the_allocator_hands_out_a_free_chunk_unsplit_under_twice_the_request():
    # 50 MiB opens a 64 MiB region, unsplit (64 < 2 x 50). Freed, it is split for 27 MiB
    # (64 >= 2 x 27), and the second 27 MiB takes the 37 MiB left whole: 64 MiB held for
    # 54 MiB of tensors.
    mib = 1 << 20
    events = [("a", 50 * mib, 0, 0), ("a", None)]
    events += [("b", 27 * mib, 0, 0), ("c", 27 * mib, 0, 0), ("b", None), ("c", None)]
    assert simulated_peak(events, batch=1, value_bytes=1, weight_bytes=4, held=[], steps=1) == (
        64 * mib
    )


def test_training_is_the_larger_of_the_tensors_and_the_allocators_chunks():
    rows = parse_layers("227x227x3", ALEXNET)
    runs = [realistic_training(rows, b, overhead=1.0) for b in (1, 8, 32, 128)]
    assert all(r["total"] == max(r["tensors_total"], r["allocator"]) for r in runs)
    assert all(r["allocator"] >= r["tensors_total"] * 0.8 for r in runs)
    assert any(r["allocator"] > r["tensors_total"] for r in runs)  # a chunk handed out whole
    assert (
        realistic_training(rows, 8, overhead=1.0, allocator_steps=0)["total"]
        == (runs[1]["tensors_total"])
    )


def test_max_batch_searches_any_monotone_cost():
    assert max_batch(lambda b: 100 + 10 * b, 1000) == 90  # 100 + 900 fits exactly
    assert max_batch(lambda b: 100 + 10 * b, 1009) == 90
    assert max_batch(lambda b: 100 + 10 * b, 109) == 0  # not even one image
    assert max_batch(lambda b: b * b, 50) == 7
    rows = parse_layers("200x300x3", EXERCISE)
    budget = 1_000_000_000

    def tensors(b: int) -> int:  # linear in the batch: the tensors' figure alone
        return realistic_training(rows, b, overhead=1.0, allocator_steps=0)["total"]

    run = realistic_training(rows, 1, overhead=1.0, allocator_steps=0)
    assert max_batch(tensors, budget) == (budget - run["fixed"]) // run["per_image"]
    bumpy = [10, 20, 30, 45, 40, 60]  # a cost that falls once: the answer still fits
    assert max_batch(lambda b: bumpy[min(b, 6) - 1], 44) == 3


def test_remedies_are_ranked_by_saving_and_carry_their_figure():
    rows = parse_layers("227x227x3", ALEXNET)
    budget = 2.0e9  # the realistic figure at batch 128 is about 2.4 GB
    now = realistic_training(rows, 128, overhead=1.0)["total"]
    assert now > budget
    remedies = rank_remedies(rows, 128, budget, "float32", 2, 1.0, image_side=227)
    names = [m["remedy"] for m in remedies]
    assert [m["saves"] for m in remedies] == sorted((m["saves"] for m in remedies), reverse=True)
    room = usable(budget)  # the 5% kept free
    assert all(
        m["bytes"] == now - m["saves"] and m["fits"] == (m["bytes"] <= room) for m in remedies
    )
    fit = max_batch(lambda b: realistic_training(rows, b, overhead=1.0)["total"], room)
    assert f"batch size {fit}" in names
    assert "mixed precision (train.precision=mixed_float16)" in names
    assert "gradient checkpointing" in names
    assert any(n.endswith("devices (data parallel)") for n in names)
    assert "freeze the lower half of the trainable layers" in names
    assert any(n.startswith("input size ") for n in names)


def test_stage_on_a_backbone_that_does_not_fit(tmp_path, capsys):
    cfg = _cfg(
        "small_cnn",
        **{"input.batch_size": 64, "memory.budget": "40MB", "paths.reports": str(tmp_path)},
    )
    paths = estimate_memory(cfg, num_classes=3, table=False)
    report = json.loads(paths[1].read_text())
    assert paths[0].name == "small_cnn-32-b64.md"
    assert report["source"]["keras_count_params"] == report["totals"]["params"]
    assert not report["phases"]["from scratch: every layer trains"]["fits"]
    assert report["remedies"] and report["remedies"][0]["saves"] >= report["remedies"][-1]["saves"]
    out = capsys.readouterr().out
    assert "remedies for from scratch" in out and "| # | layer |" not in out


def test_pretrained_weights_are_replayed_as_loaded_not_drawn():
    # A run that loads ImageNet weights holds the loaded values, not the chunks its
    # initializers left; a run from random weights holds those chunks.
    def drawn(weights: str) -> bool:
        phases, _ = model_phases(_cfg("mobilenet", **{"model.weights": weights}), 3)
        return any(v.drawn for rows in phases.values() for r in rows for v in r.variables)

    assert drawn("none") and not drawn("imagenet")


def test_a_moving_average_of_the_weights_is_a_third_optimizer_value(tmp_path):
    # train.ema makes Keras's Adam keep the averaged weights beside its two moments.
    def optimizer_bytes(ema: float) -> int:
        cfg = _cfg(**{"train.ema": ema, "paths.reports": str(tmp_path / str(ema))})
        report = json.loads(estimate_memory(cfg, num_classes=3, table=False)[1].read_text())
        return next(iter(report["phases"].values()))["realistic"]["optimizer"]

    assert optimizer_bytes(0.99) == optimizer_bytes(0.0) * 3 // 2


# ----------------------------------------------------------------------------- CLI, config


def test_cli_prints_the_working_for_a_layer_spec(tmp_path, capsys):
    code = main(
        [
            "memory",
            "--input",
            "200x300x3",
            "--layers",
            EXERCISE,
            "--batch",
            "50",
            f"paths.reports={tmp_path}",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "2,800 + 180,200 + 720,400 = 903,400" in out
    assert "(3x3x3+1)x100 = 2,800" in out
    assert "**12,613,600 B = 12.6 MB (12.0 MiB)**" in out
    assert "50 x (2,630,000 activations + 180,000 input values) x 4 B" in out
    assert "**565,613,600 B = 565.6 MB" in out
    written = sorted(p.name for p in (tmp_path / "memory").iterdir() if p.name[0] != ".")
    assert len(written) == 2 and written[0].startswith("layers-200x300x3-")
    data = json.loads((tmp_path / "memory" / written[0]).read_text())
    assert data["totals"]["params"] == 903_400


def test_epoch_time_from_a_stated_throughput(tmp_path):
    cfg = with_overrides(
        Config(),
        {"memory.throughput": "1T", "memory.epoch_images": 1000, "paths.reports": str(tmp_path)},
    )
    paths = estimate_memory(cfg, layers=EXERCISE, input_shape="200x300x3", table=False)
    phase = json.loads(paths[1].read_text())["phases"]["all layers train"]
    # 1,000 images x 8,319,760,000 FLOPs per training step and image / 1e12 FLOP/s
    assert phase["epoch_seconds"] == pytest.approx(8.31976)
    assert "## Time per epoch (1,000 images" in paths[0].read_text()


def test_cli_rejects_an_unknown_token_in_one_line(capsys):
    assert main(["memory", "--input", "32x32x3", "--layers", "conv3x3:8,pool"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Unknown layer 'pool'" in err and "maxpool{K}x{K}" in err


def test_quantities_and_their_validation():
    assert parse_quantity("16GiB") == 16 * 2**30
    assert parse_quantity("500MB") == 500e6
    assert parse_quantity("2.5T") == 2.5e12
    assert parse_quantity("1e9") == 1e9
    with pytest.raises(ConfigError, match=r"memory.budget must be a number .* Received: '16 gigs'"):
        with_overrides(Config(), {"memory.budget": "16 gigs"})
    with pytest.raises(ConfigError, match=r"memory\.throughput"):
        with_overrides(Config(), {"memory.throughput": "fast"})
    with pytest.raises(ConfigError, match=r"memory\.optimizer_slots must be 0 or more"):
        with_overrides(Config(), {"memory.optimizer_slots": -1})


def test_base_without_head_and_frozen_base_follow_keras():
    cfg = _cfg("mobilenet_v2")
    model = build_classifier(classifier_spec(cfg), 4)
    freeze_for_phase(model, classifier_spec(cfg), 1)
    rows = layers_from_model(model)
    assert sum(r.trainable for r in rows) == _keras_trainable(model) == 1280 * 4 + 4
    assert sum(r.params for r in layers_from_model(get_base(model))) == (
        get_base(model).count_params()
    )
