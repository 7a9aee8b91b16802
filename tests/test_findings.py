def test_nothing_to_compare_says_which_side_is_missing():
    from cbmir.analyses.findings import nothing_to_compare

    none = nothing_to_compare(["sam-vit-b", "biomedclip"])
    assert "None of the 2 models of this run is a baseline (raw-pixels, random-vit)" in none
    only = nothing_to_compare(["raw-pixels"], ["raw-pixels", "random-vit"])
    assert only.startswith("Only baselines ran (raw-pixels)")
