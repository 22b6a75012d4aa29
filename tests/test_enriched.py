"""Mail whose only text is text/enriched (RFC 1896) or text/richtext (RFC 1341): its words are
shown, searched and used for the snippet, without the formatting commands."""

import random

import pytest

from mailsync.enriched import enriched_to_text
from mailsync.parse import parse_message
from tests.test_parse import message_of, multipart, part

# RFC 1896, section 4 (its example, shortened): bold, italics, a fontfamily with a param, and
# paragraphs made of two line breaks.
RFC_EXAMPLE = (
    "<bold>Now</bold> is the time for <italic>all</italic> good men\r\n"
    " <smaller>(and <<women>)</smaller> to\r\n"
    "<ignoreme>come</ignoreme>\r\n"
    "\r\n"
    "to the aid of their\r\n"
    "\r\n"
    "\r\n"
    "<color><param>red</param>beloved</color> country.\r\n"
    "<fontfamily><param>Times New Roman</param>By the way,</fontfamily>\r\n"
)


def test_the_rfc_example_reads_as_its_words():
    assert enriched_to_text(RFC_EXAMPLE) == (
        "Now is the time for all good men  (and <women>) to come\n"
        "to the aid of their\n\n"
        "beloved country. By the way,"
    )


def test_nofill_keeps_every_line_break():
    source = "Lines:\r\n<nofill>one\r\ntwo\r\n\r\nthree</nofill>\r\nend"
    assert enriched_to_text(source) == "Lines: one\ntwo\n\nthree end"


def test_commands_are_read_in_any_case_and_unknown_ones_dropped():
    source = "<BOLD>big</Bold> <x-made-up>news</x-made-up> <Param>hidden</PARAM>here"
    assert enriched_to_text(source) == "big news here"


def test_a_lone_less_than_sign_and_an_unclosed_command_stay_text():
    assert enriched_to_text("a < b and <c") == "a < b and <c"
    assert enriched_to_text("x <bold unclosed") == "x <bold unclosed"


def test_richtext_breaks_lines_with_commands():
    source = (
        "Dear Bo,<nl>\r\n<nl>\r\nthe price is <lt>10 euros\r\nand <bold>final</bold>.<np>Page two"
    )
    assert enriched_to_text(source, "text/richtext") == (
        "Dear Bo,\n\nthe price is <10 euros and final.\nPage two"
    )


def random_enriched(rng: random.Random) -> tuple[str, str]:
    """A random text/enriched body and the text it holds: words wrapped in commands (params
    between), "<" written as "<<", paragraphs as two or three line breaks, lines folded."""
    commands = ["bold", "italic", "underline", "fixed", "smaller", "bigger", "excerpt"]
    paragraphs, expected = [], []
    for _ in range(rng.randint(1, 4)):
        words = [
            rng.choice(["deal", "price", "a<b", "Grüße", "<<", "x", "Q3", "ok."])
            for _ in range(rng.randint(1, 12))
        ]
        expected.append(" ".join(words))
        written = []
        for word in words:
            word = word.replace("<", "<<")
            if rng.random() < 0.4:
                name = rng.choice(commands)
                param = f"<param>{rng.choice(['red', 'Times', '1,2'])}</param>" * (
                    rng.random() < 0.3
                )
                word = f"<{name}>{param}{word}</{name}>"
            written.append(word)
        # A single line break between words reads as the space it replaces.
        line = "".join(w + rng.choice([" ", "\r\n"]) for w in written[:-1]) + written[-1]
        paragraphs.append(line)
    separators = [rng.choice([2, 3]) for _ in paragraphs[1:]]
    source = paragraphs[0]
    text = expected[0]
    for count, paragraph, words in zip(separators, paragraphs[1:], expected[1:], strict=True):
        source += "\r\n" * count + paragraph
        text += "\n" * (count - 1) + words
    return source, text


def test_random_enriched_bodies_read_as_their_words():
    rng = random.Random(1896)
    for _ in range(500):
        source, text = random_enriched(rng)
        assert enriched_to_text(source) == text, source


def test_a_mail_with_only_enriched_text_shows_it():
    raw = message_of(part(b"Content-Type: text/enriched; charset=us-ascii", RFC_EXAMPLE.encode()))
    parsed = parse_message(raw)
    assert parsed.text_body.startswith("Now is the time for all good men")
    assert "<bold>" not in parsed.text_body and "red" not in parsed.text_body
    assert parsed.snippet.startswith("Now is the time")
    assert parsed.attachments == []  # the body, not an unnamed file


@pytest.mark.parametrize(
    ("second", "text", "files"),
    [
        # Beside plain text in a mixed mail, an inline enriched part is shown too.
        (
            part(b"Content-Type: text/enriched", b"<bold>Second</bold> part."),
            "First part.\nSecond part.",
            ["a.pdf"],
        ),
        # An enriched file is still a file.
        (
            part(
                b'Content-Type: text/enriched\r\nContent-Disposition: attachment; filename="n.etf"',
                b"<bold>notes</bold>",
            ),
            "First part.",
            ["n.etf", "a.pdf"],
        ),
    ],
)
def test_enriched_text_beside_other_parts_of_a_mixed_mail(second, text, files):
    raw = message_of(
        multipart(
            "mixed",
            "mix",
            part(b"Content-Type: text/plain", b"First part."),
            second,
            part(b'Content-Type: application/pdf; name="a.pdf"', b"%PDF"),
        )
    )
    parsed = parse_message(raw)
    assert parsed.text_body == text
    assert [a.filename for a in parsed.attachments] == files
