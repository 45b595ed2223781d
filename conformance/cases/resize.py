"""Cases of Resize: nearest, linear and cubic modes, and each coordinate transformation."""

from __future__ import annotations

import functools

from backplane.conformance.cases.build import IMAGE, SIZES, T, Builder, CaseGenerator, const
from backplane.conformance.cases.values import is_float, special_data


def _resize(b: Builder, dtypes: list[str]) -> None:
    main = dtypes[0]
    scales = functools.partial(const, dtype="float32")

    def add(label, x, attrs, sc=None, sizes=None, roi=None, tags=(), dt=main):
        ins = [T(x), const(roi, "float32") if roi is not None else None,
               scales(sc) if sc is not None else None]
        if sizes is not None:
            ins.append(const(sizes))
        b.add(dt, label, ins, attrs, tags=tags)

    nearest, linear = {"mode": "nearest"}, {"mode": "linear"}
    add("rank-4-nearest-scales-2", (1, 2, 3, 4), nearest, [1, 1, 2, 2])
    add("rank-1-nearest", (5,), nearest, [2.0])
    add("rank-2-linear", (3, 4), linear, [2.0, 1.5])
    add("rank-3-linear", (1, 3, 5), linear, [1, 1, 2.5])
    add("rank-5-linear", (1, 1, 2, 3, 3), linear, [1, 1, 2, 2, 2])
    for mode in ("floor", "ceil", "round_prefer_ceil", "round_prefer_floor"):
        add(f"attr-nearest-mode-{mode.replace('_', '-')}", (1, 1, 4, 5),
            {**nearest, "nearest_mode": mode}, [1, 1, 1.7, 2.3], tags=["attr"])
    for ctm in ("asymmetric", "align_corners", "pytorch_half_pixel", "half_pixel_symmetric"):
        add(f"attr-linear-{ctm.replace('_', '-')}", (1, 2, 4, 4),
            {**linear, "coordinate_transformation_mode": ctm}, [1, 1, 1.5, 2.5], tags=["attr"])
    add("attr-nearest-asymmetric", (1, 2, 4, 4),
        {**nearest, "coordinate_transformation_mode": "asymmetric"}, [1, 1, 2, 3], tags=["attr"])
    add("attr-linear-downsample", (1, 2, 8, 8), linear, [1, 1, 0.5, 0.6], tags=["attr"])
    add("attr-linear-antialias", (1, 2, 8, 8), {**linear, "antialias": 1}, [1, 1, 0.5, 0.5],
        tags=["attr"])
    add("attr-cubic", (1, 1, 4, 4), {"mode": "cubic"}, [1, 1, 2, 2], tags=["attr"])
    add("attr-nearest-sizes", (1, 2, 3, 4), nearest, sizes=[1, 2, 7, 5], tags=["attr"])
    add("attr-linear-sizes", (1, 2, 3, 4), linear, sizes=[1, 2, 5, 9], tags=["attr"])
    add("attr-axes-scales", (1, 2, 3, 4), {**linear, "axes": [2, 3]}, [2, 2], tags=["attr"])
    add("attr-keep-aspect-not-larger", (1, 2, 4, 6),
        {**linear, "axes": [2, 3], "keep_aspect_ratio_policy": "not_larger"}, sizes=[8, 8],
        tags=["attr"])
    add("attr-tf-crop-and-resize", (1, 1, 5, 5),
        {**linear, "coordinate_transformation_mode": "tf_crop_and_resize",
         "extrapolation_value": 0.5}, [1, 1, 1.6, 1.6],
        roi=[0, 0, 0.1, 0.2, 1, 1, 0.9, 1.2], tags=["attr"])
    add("empty-batch-0", (0, 2, 3, 3), nearest, [1, 1, 2, 2])
    for n in SIZES:
        add(f"size-{n}", (1, 1, 1, n), linear, [1, 1, 2, 2], tags=[f"size-{n}"])
    add("large-1x16x64x64", IMAGE, nearest, [1, 1, 2, 2], tags=["large"])
    # Nearest only copies: every special value arrives as it is. onnx.reference (1.23)
    # weighs every input element, 0 x inf spreading NaN: doubling is repeating each twice.
    b.add(main, "special-values", [T((1, 1, 4, 8), special_data()), None,
                                   scales([1, 1, 2, 2])], nearest, tags=["special-values"],
          expect=lambda arrays: [arrays[0].repeat(2, axis=2).repeat(2, axis=3)])
    for dt in dtypes[1:]:
        if dt == "bool":  # onnx.reference cannot resize booleans
            continue
        add("rank-4-nearest-scales-2", (1, 2, 3, 4), nearest, [1, 1, 2, 2], dt=dt)
        if is_float(dt):
            add("attr-linear-downsample", (1, 2, 8, 8), linear, [1, 1, 0.5, 0.6], tags=["attr"],
                dt=dt)


#: The case generator of each op of this family.
GENERATORS: dict[str, CaseGenerator] = {
    "Resize": _resize,
}
