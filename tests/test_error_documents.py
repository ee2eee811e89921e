"""Error documents are well-formed XML whatever client input they quote, and counts read
from headers are plain ASCII decimals (found by tests/test_fuzz_front.py)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from hypothesis import given, strategies as st

from inproxy import errors
from inproxy.s3.headers import decimal_count
from inproxy.s3.xml import xml_text

# What XML 1.0 can carry: tab, LF, CR and everything from space on but surrogates, U+FFFE, U+FFFF.
_XML_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\ufffe\uffff",
                           min_codepoint=0x20) | st.sampled_from("\t\n")


@given(st.text())
def test_any_quoted_text_gives_a_well_formed_error_document(text):
    # Raw bytes of a request reach the proxy as lone surrogates (surrogateescape).
    document = errors.SignatureDoesNotMatch(CanonicalRequest=text + "\udcff").to_xml(resource="/b/" + text)
    root = ET.fromstring(document)
    assert root.tag == "Error" and root.find("Code").text == "SignatureDoesNotMatch"


@given(st.text(alphabet=_XML_CHARS))
def test_text_xml_can_carry_comes_back_unchanged(text):
    assert ET.fromstring(f"<a>{xml_text(text)}</a>").text in (text, None if text == "" else text)


def test_what_xml_cannot_carry_is_replaced():
    assert xml_text("a\x01b\udcffc\ufffe<&>") == "a\ufffdb\ufffdc\ufffd&lt;&amp;&gt;"


def test_decimal_count_takes_ascii_digits_only():
    assert decimal_count("0") == 0 and decimal_count("123") == 123
    assert decimal_count("9" * 18) == int("9" * 18)
    for bad in (None, "", "\u00b2", "\u0661", "1_0", " 1", "+1", "-1", "1.0", "9" * 19):
        assert decimal_count(bad) is None, bad
