"""How the HTCondor backend hands a job's argv and environment to the schedd (workers/backends/htcondor.py's pure
helpers): each argument comes back verbatim when the job ad's Arguments are read as HTCondor reads them, with no
shell and no macro expansion; what HTCondor cannot carry (newline, NUL) is refused, never mangled.

`split_v2` below is HTCondor's "new syntax" for Arguments as its manual gives it (whitespace separates arguments,
single quotes group them, '' inside quotes is one literal quote), written out here so the check needs no pool."""
from __future__ import annotations

import pytest

from caesar_rest.errors import BackendError
from workers.backends.htcondor import (
    HTCondorBackend,
    ad_string,
    condor_arguments,
    condor_environment,
    without_match_time_expansion,
)

NASTY = ["plain", "two words", "it's", "''", "'", 'say "hi"', "a; rm -rf /", "$(HOME)", "$ENV(SECRET)", "$$(Cpus)",
         "$$", "$$$(x)", "\\backslash\\", "tab\there", "  padded  ", "", "ünïcødé", "--flag=value", "*?[glob]"]


def split_v2(text: str) -> list[str]:
    """Arguments in HTCondor's new syntax, split as the starter splits them for exec()."""
    args: list[str] = []
    current: list[str] | None = None
    i, quoted = 0, False
    while i < len(text):
        c = text[i]
        if quoted:
            if c == "'" and text[i + 1:i + 2] == "'":
                current.append("'")             # type: ignore[union-attr]
                i += 2
                continue
            if c == "'":
                quoted = False
            else:
                current.append(c)               # type: ignore[union-attr]
        elif c in " \t":
            if current is not None:
                args.append("".join(current))
                current = None
        elif c == "'":
            quoted = True
            current = current if current is not None else []
        else:
            current = (current if current is not None else []) + [c]
        i += 1
    assert not quoted, f"unbalanced quote in {text!r}"
    if current is not None:
        args.append("".join(current))
    return args


def matched(value: str) -> str:
    """What the schedd leaves of a value at match time: $$(DOLLARDOLLAR) is a literal $$."""
    return value.replace("$$(DOLLARDOLLAR)", "$$")


def test_every_argument_comes_back_verbatim():
    assert [matched(a) for a in split_v2(condor_arguments(NASTY))] == NASTY


@pytest.mark.parametrize("arg", NASTY)
def test_each_argument_alone_is_one_argument(arg):
    assert [matched(a) for a in split_v2(condor_arguments([arg]))] == [arg]


def test_the_quoting_is_the_documented_one():
    assert condor_arguments(["a b", "it's", ""]) == "'a b' 'it''s' ''"
    assert condor_arguments([]) == ""


@pytest.mark.parametrize("arg", ["line\nbreak", "carriage\rreturn", "nul\x00byte"])
def test_what_htcondor_cannot_carry_is_refused_naming_it(arg):
    with pytest.raises(BackendError) as caught:
        condor_arguments(["fine", arg])
    assert repr(arg) in caught.value.message


def test_only_match_time_dollars_are_escaped():
    assert without_match_time_expansion("$$(Cpus)") == "$$(DOLLARDOLLAR)(Cpus)"
    assert without_match_time_expansion("$(HOME) $ENV(X) $ plain") == "$(HOME) $ENV(X) $ plain"
    assert without_match_time_expansion("cost $$ 5") == "cost $$ 5"
    assert without_match_time_expansion("$$$$(x)") == "$$$$(DOLLARDOLLAR)(x)"      # pairs from the left


def test_the_environment_is_quoted_like_arguments():
    env = {"A": "1", "SPACED": "two words", "QUOTE": "it's", "EMPTY": "", "EQ": "x=y"}
    assert split_v2(condor_environment(env)) == ["A=1", "SPACED=two words", "QUOTE=it's", "EMPTY=", "EQ=x=y"]


@pytest.mark.parametrize("name", ["", "A=B", "WITH SPACE", "semi;colon", "dash-ed"])
def test_an_environment_name_htcondor_would_misread_is_refused(name):
    with pytest.raises(BackendError, match="Invalid environment variable name"):
        condor_environment({name: "v"})


def test_a_value_with_a_newline_in_the_environment_is_refused():
    with pytest.raises(BackendError, match="newline"):
        condor_environment({"X": "a\nb"})


@pytest.mark.parametrize("value, literal", [
    ("plain", '"plain"'),
    ('say "hi"', '"say \\"hi\\""'),
    ("C:\\dir\\", '"C:\\dir\\"'),           # old ClassAd syntax: a backslash is itself
    ("'a b' 'it''s'", "\"'a b' 'it''s'\""),
])
def test_an_edited_attribute_is_a_string_literal_of_old_classad_syntax(value, literal):
    assert ad_string(value) == literal


@pytest.mark.parametrize("expr, problem", [
    (None, None),
    ('OpSys == "LINUX" && Memory > 1024', None),
    ("", "must be a ClassAd expression"),
    (42, "must be a ClassAd expression"),
    ("Memory >", "is not a valid ClassAd expression"),
])
def test_a_job_s_requirements_option_is_checked_before_any_schedd_is_asked(expr, problem):
    import classad2  # noqa: F401  the condor extra's parser (make install puts every extra in): never skipped
    said = HTCondorBackend.check_job_options({}, {} if expr is None else {"requirements": expr})
    if problem is None:
        assert said is None
    else:
        assert said is not None and problem in said
