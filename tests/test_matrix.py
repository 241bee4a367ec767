from conftest import small_study

from llm_energy.study.config import validate_study
from llm_energy.study.identity import cell_hash
from llm_energy.study.matrix import expand, matrix_csv


def test_cells_cross_every_axis_and_ids_are_stable():
    study = validate_study(small_study(backends={"transformers": {"batch_size": [1, 2, 4],
                                                                  "dtype": ["float32", "bfloat16"]}}))
    cells, pruned = expand(study)
    assert len(cells) == 6 and not pruned
    assert len({c.cell_id for c in cells}) == 6
    again, _ = expand(validate_study(small_study(backends={"transformers": {
        "dtype": ["float32", "bfloat16"], "batch_size": [1, 2, 4]}})))
    assert [c.cell_id for c in cells] == [c.cell_id for c in again]
    assert cells[0].path == f"cells/tiny/transformers/{cells[0].cell_id}"


def test_any_change_makes_a_new_id():
    base = {"a": 1, "b": {"c": [1, 2]}}
    assert cell_hash(base) == cell_hash({"b": {"c": [1, 2]}, "a": 1})
    assert cell_hash(base) != cell_hash({"a": 1, "b": {"c": [2, 1]}})


def test_impossible_combinations_are_pruned_with_reason():
    study = validate_study(small_study(backends={
        "transformers": {"dtype": ["float32", "float16"]},
        "vllm": {"dtype": ["bfloat16", "float16"], "quantization": [None, "awq"]}}))
    cells, pruned = expand(study)
    assert {(c.backend, c.settings["dtype"]) for c in cells} == {
        ("transformers", "float32"), ("vllm", "bfloat16")}
    assert len(pruned) == 4 and all(p.reason for p in pruned)
    table = matrix_csv(cells, pruned)
    assert table.count(",pruned,") == 4 and table.count(",planned,") == 2
