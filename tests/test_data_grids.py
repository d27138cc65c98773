"""Grid codec and augmentations: exact layouts, the official crop rule, and exact inverses."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from etrm.data.grids import (
    DIHEDRAL_INVERSE,
    EOS_ID,
    PAD_ID,
    Augmentation,
    augmentation_name,
    check_augmentation_round_trip,
    decode_grid,
    dihedral_transform,
    encode_grid,
    inverse_dihedral_transform,
    parse_augmentation_name,
    random_augmentation,
)


@st.composite
def grids(draw, max_side: int = 30) -> np.ndarray:
    rows = draw(st.integers(1, max_side))
    cols = draw(st.integers(1, max_side))
    return draw(arrays(np.uint8, (rows, cols), elements=st.integers(0, 9)))


permutations_fixing_0 = st.permutations(list(range(1, 10))).map(lambda p: (0, *p))
any_permutation = st.permutations(list(range(10))).map(tuple)


# --- encoding -------------------------------------------------------------------------------
def test_encode_layout_with_offset_matches_the_spec_by_hand():
    tokens = encode_grid([[1, 2, 3], [4, 5, 6]], canvas=5, offset=(1, 1))
    expected = np.array(
        [
            [0, 0, 0, 0, 0],
            [0, 3, 4, 5, 1],
            [0, 6, 7, 8, 1],
            [0, 1, 1, 1, 0],  # EOS below the columns; the corner stays PAD
            [0, 0, 0, 0, 0],
        ],
        dtype=np.uint8,
    )
    assert tokens.dtype == np.uint8 and tokens.shape == (25,)
    np.testing.assert_array_equal(tokens.reshape(5, 5), expected)


def test_encode_writes_eos_only_where_it_fits():
    full = encode_grid(np.zeros((4, 4), dtype=int), canvas=4)
    assert (full == 2).all()  # no room for EOS at all
    wide = encode_grid(np.zeros((2, 4), dtype=int), canvas=4).reshape(4, 4)
    np.testing.assert_array_equal(wide[2], [EOS_ID] * 4)  # row segment only
    np.testing.assert_array_equal(wide[3], [PAD_ID] * 4)
    tall = encode_grid(np.zeros((4, 1), dtype=int), canvas=4).reshape(4, 4)
    np.testing.assert_array_equal(tall[:, 1], [EOS_ID] * 4)  # column segment only
    assert (tall[:, 2:] == PAD_ID).all()


@pytest.mark.parametrize(
    "grid, kwargs, message",
    [
        ([[1, 2], [3]], {}, "ragged"),
        ([[1, 10]], {}, "value 10"),
        ([[-1, 0]], {}, "value -1"),
        ([], {}, "empty"),
        ([[]], {}, "empty"),
        (np.zeros((2, 2, 2), dtype=int), {}, "2-D"),
        (np.zeros((2, 2)), {}, "integers"),  # float dtype
        (np.zeros((31, 3), dtype=int), {}, "exceeds 30x30"),
        (np.zeros((6, 3), dtype=int), {"canvas": 5}, "exceeds 5x5"),
        (np.zeros((3, 3), dtype=int), {"canvas": 5, "offset": (3, 0)}, "does not fit"),
        (np.zeros((3, 3), dtype=int), {"offset": (0, -1)}, "does not fit"),
        ("abc", {}, "list of rows"),
    ],
)
def test_encode_rejects_bad_grids_naming_the_problem(grid, kwargs, message):
    with pytest.raises(ValueError, match=message):
        encode_grid(grid, **kwargs)


@given(grids())
def test_decode_inverts_encode(grid):
    decoded = decode_grid(encode_grid(grid))
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, grid)


@given(grids(max_side=12), st.data())
def test_decode_inverts_encode_at_any_offset(grid, data):
    canvas = 12
    offset = (data.draw(st.integers(0, canvas - grid.shape[0])), data.draw(st.integers(0, canvas - grid.shape[1])))
    tokens = encode_grid(grid, canvas=canvas, offset=offset)
    np.testing.assert_array_equal(decode_grid(tokens, offset=offset), grid)
    np.testing.assert_array_equal(decode_grid(tokens.reshape(canvas, canvas), canvas=canvas, offset=offset), grid)


# --- decoding (the official evaluator's crop) --------------------------------------------
def reference_crop(canvas_tokens: np.ndarray) -> tuple[int, int]:
    """A plain loop transcription of the crop rule, as the oracle for the vectorised one."""
    best_area, best = 0, (0, 0)
    width = canvas_tokens.shape[1]
    for r in range(canvas_tokens.shape[0]):
        run = 0
        while run < width and 2 <= canvas_tokens[r, run] <= 11:
            run += 1
        width = min(width, run)
        if (r + 1) * width > best_area:
            best_area, best = (r + 1) * width, (r + 1, width)
    return best


@given(arrays(np.int64, (6, 6), elements=st.sampled_from([0, 1, 2, 5, 11, 12, -100])))
def test_decode_crops_like_the_reference_loop(tokens):
    rows, cols = reference_crop(tokens)
    decoded = decode_grid(tokens.reshape(-1))
    assert decoded.shape == ((rows, cols) if rows * cols else (0, 0))
    np.testing.assert_array_equal(decoded, tokens[:rows, :cols] - 2)


def test_decode_picks_the_largest_area_not_the_first_row():
    tokens = np.zeros((6, 6), dtype=np.uint8)
    tokens[0, :5] = 3  # a 1x5 strip (area 5) ...
    tokens[1:4, :2] = 4  # ... then rows of width 2: 4x2 = 8 wins
    decoded = decode_grid(tokens)
    assert decoded.shape == (4, 2)
    assert decoded[0, 0] == 1 and decoded[3, 1] == 2


def test_decode_of_a_non_colour_start_is_empty_and_bad_lengths_raise():
    assert decode_grid(np.zeros(900, dtype=np.uint8)).shape == (0, 0)
    assert decode_grid(np.full(100, EOS_ID)).shape == (0, 0)
    with pytest.raises(ValueError, match="not a"):
        decode_grid(np.zeros(99))
    with pytest.raises(ValueError, match="square canvas"):
        decode_grid(np.zeros((3, 4)))


# --- dihedral group -----------------------------------------------------------------------
# Each transform as a signed permutation matrix on centred (row, col) coordinates: an
# independent description of the official ids to check np.rot90/flip/transpose against.
MATRICES = {
    0: ((1, 0), (0, 1)),
    1: ((0, -1), (1, 0)),  # rot90 k=1: (r, c) -> (-c, r)
    2: ((-1, 0), (0, -1)),
    3: ((0, 1), (-1, 0)),
    4: ((1, 0), (0, -1)),  # fliplr
    5: ((-1, 0), (0, 1)),  # flipud
    6: ((0, 1), (1, 0)),  # transpose
    7: ((0, -1), (-1, 0)),  # anti-transpose
}


def transform_by_matrix(grid: np.ndarray, matrix) -> np.ndarray:
    m = np.array(matrix)
    rows, cols = grid.shape
    out_shape = (rows, cols) if m[0, 0] != 0 else (cols, rows)
    r, c = np.indices(grid.shape)
    # Doubled centred coordinates stay integers for even and odd sizes.
    centred = np.stack([2 * r - (rows - 1), 2 * c - (cols - 1)]).reshape(2, -1)
    moved = m @ centred
    out_r = (moved[0] + out_shape[0] - 1) // 2
    out_c = (moved[1] + out_shape[1] - 1) // 2
    out = np.empty(out_shape, dtype=grid.dtype)
    out[out_r, out_c] = grid.reshape(-1)
    return out


def matrix_id(matrix: np.ndarray) -> int:
    return next(t for t, m in MATRICES.items() if np.array_equal(np.array(m), matrix))


@given(grids(max_side=7))
def test_transforms_match_their_matrices_and_compose_like_the_group(grid):
    for t, m in MATRICES.items():
        np.testing.assert_array_equal(dihedral_transform(grid, t), transform_by_matrix(grid, m))
    for a in range(8):
        for b in range(8):
            composed = matrix_id(np.array(MATRICES[b]) @ np.array(MATRICES[a]))
            np.testing.assert_array_equal(
                dihedral_transform(dihedral_transform(grid, a), b), dihedral_transform(grid, composed)
            )


def test_inverse_table_is_the_group_inverse():
    for t in range(8):
        product = np.array(MATRICES[DIHEDRAL_INVERSE[t]]) @ np.array(MATRICES[t])
        assert matrix_id(product) == 0


@given(grids(max_side=9), st.integers(0, 7))
def test_inverse_dihedral_transform_undoes_every_transform(grid, t):
    np.testing.assert_array_equal(inverse_dihedral_transform(dihedral_transform(grid, t), t), grid)


@pytest.mark.parametrize("t", [-1, 8, 1.0, True, "1"])
def test_transform_ids_are_validated(t):
    with pytest.raises(ValueError, match="transform id"):
        dihedral_transform(np.zeros((2, 2)), t)


# --- augmentations ------------------------------------------------------------------------
@given(grids(max_side=10), st.integers(0, 7), permutations_fixing_0)
def test_augmentation_inverse_is_exact_for_official_draws(grid, t, mapping):
    aug = Augmentation(t, mapping)
    np.testing.assert_array_equal(aug.invert(aug.apply(grid)), grid)


@given(grids(max_side=10), st.integers(0, 7), any_permutation)
def test_augmentation_applies_colour_map_then_transform(grid, t, mapping):
    aug = Augmentation(t, mapping)
    expected = dihedral_transform(np.array(mapping)[grid], t)
    np.testing.assert_array_equal(aug.apply(grid), expected)
    np.testing.assert_array_equal(aug.invert(aug.apply(grid)), grid)


def test_augmentation_validates_and_knows_identity():
    assert Augmentation().is_identity
    assert not Augmentation(0, (0, 2, 1, 3, 4, 5, 6, 7, 8, 9)).is_identity
    assert Augmentation(3, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]) == Augmentation(3)  # lists normalised
    with pytest.raises(ValueError, match="permutation"):
        Augmentation(0, (0, 1, 1, 3, 4, 5, 6, 7, 8, 9))
    with pytest.raises(ValueError, match="transform id"):
        Augmentation(8)


def test_random_augmentation_is_seeded_and_keeps_black():
    draws = [random_augmentation(np.random.default_rng(7)) for _ in range(2)]
    assert draws[0] == draws[1]
    rng = np.random.default_rng(0)
    many = [random_augmentation(rng) for _ in range(200)]
    assert all(a.mapping[0] == 0 for a in many)
    assert {a.transform_id for a in many} == set(range(8))


@given(st.text("0123456789abcdef", min_size=1, max_size=12), st.integers(0, 7), permutations_fixing_0)
def test_names_round_trip(task_id, t, mapping):
    aug = Augmentation(t, mapping)
    name = augmentation_name(task_id, aug)
    assert parse_augmentation_name(name) == (task_id, aug)
    if aug.is_identity:
        assert name == task_id
    else:
        assert name == f"{task_id}|||t{t}|||{''.join(map(str, mapping))}"


def test_official_name_format_and_bad_names():
    aug = Augmentation(7, (0, 3, 1, 2, 4, 5, 6, 7, 8, 9))
    assert augmentation_name("007bbfb7", aug) == "007bbfb7|||t7|||0312456789"
    assert parse_augmentation_name("007bbfb7") == ("007bbfb7", Augmentation())
    for bad in [
        "x|||t8|||0123456789",
        "x|||t1|||012345678",
        "x|||t1|||0123456788",
        "x|||1|||0123456789",
        "x|||t1",
        "|||t1|||0123456789",
        "x|||t1|||0123456789|||y",
    ]:
        with pytest.raises(ValueError, match="malformed puzzle name"):
            parse_augmentation_name(bad)
    with pytest.raises(ValueError, match="must not contain"):
        augmentation_name("a|||b", aug)


def test_round_trip_check_passes_on_the_real_inverse():
    assert check_augmentation_round_trip() == []


def test_round_trip_check_catches_an_inverse_wrong_for_one_transform():
    def broken_invert(grid, aug):
        # Negative control: treat t7 (anti-transpose) as if t6 (transpose) undid it.
        t = 6 if aug.transform_id == 7 else DIHEDRAL_INVERSE[aug.transform_id]
        return np.array(aug.inverse_mapping, dtype=np.uint8)[dihedral_transform(grid, t)]

    failures = check_augmentation_round_trip(invert=broken_invert)
    assert failures and all(f.startswith("t7 ") for f in failures)
    # 3 mappings x 3 grids for the one broken transform
    assert len(failures) == 9


@given(grids(max_side=6))
def test_transforms_equal_the_numpy_compositions_they_are_named_after(grid):
    named = [
        grid,
        np.rot90(grid, 1),
        np.rot90(grid, 2),
        np.rot90(grid, 3),
        np.fliplr(grid),
        np.flipud(grid),
        grid.T,
        np.fliplr(np.rot90(grid, 1)),
    ]
    for t, expected in enumerate(named):
        np.testing.assert_array_equal(dihedral_transform(grid, t), expected)
