"""The shipped investigation suite: thin pytest modules, one per hypothesis, that run the
checks of `etrm.checks` on the artifacts of `etrm.testing.artifacts`; and `test_model_code`,
the checks that need no trained weights on a user's model code (`--model-code` with
`--model-config`, one case per config file), each test marked with its hypothesis.

Run it with `etrm investigate`, or `pytest -m hypothesisN` in a checkout. Conventions
(see conftest.py, which enforces the first):
- every test carries a `hypothesis1`..`hypothesis7` or `experiment1` marker;
- a test hands its `CheckResult` to the `record_check` fixture (fail = evidence found,
  inconclusive = skipped with the reason), never asserts on it directly;
- every check has a negative control: a test that runs it on a deliberately broken
  variant and hands the result to `expect_check_fails`; it passes when the check
  fails and is counted as a control, never as evidence;
- artifacts come from the `artifacts` fixture: `artifacts.require("trm_checkpoint")`
  skips, naming the option to pass, when neither the user nor the fixtures have one;
  `artifacts.require_matching(...)` for artifacts that must belong together;
- only the test that decides experiment1 from a real metrics log records
  `numbers["scenario"]`; tests of the decision rule on constructed histories assert.
"""
