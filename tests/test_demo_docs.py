"""The demo numbers published in the README and docs/demo are copies of the runs' results.md, never typed by hand."""

import os

import pytest

from trl_search.demo.report import GENERATED_BLOCK, generated_body, sync_generated_blocks


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("document", ["README.md", "docs/demo/README.md"])
def test_every_generated_block_matches_the_results_it_names(document):
    with open(os.path.join(ROOT, document), encoding="utf-8") as handle:
        blocks = list(GENERATED_BLOCK.finditer(handle.read()))
    assert blocks, f"{document} shows no generated demo results"
    for block in blocks:
        with open(os.path.join(ROOT, block.group("source")), encoding="utf-8") as handle:
            expected = generated_body(handle.read())
        assert block.group("body") == expected, (
            f"{document}: the block from {block.group('source')} was edited by hand or is stale; refresh it with "
            "`python -m trl_search.demo.report`"
        )


def test_sync_rewrites_a_stale_block_from_its_source(tmp_path):
    (tmp_path / "results.md").write_text("# trl-search demo results\n\nSeed 0.\n\n| a |\n")
    marker = "<!-- generated from results.md by python -m trl_search.demo.report -->\n"
    page = tmp_path / "page.md"
    page.write_text(f"intro\n{marker}typed by hand\n<!-- end generated -->\noutro\n")
    assert sync_generated_blocks(str(page), root=str(tmp_path)) == ["results.md"]
    assert page.read_text() == f"intro\n{marker}Seed 0.\n\n| a |\n<!-- end generated -->\noutro\n"
