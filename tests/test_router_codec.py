"""The SDN record codec: exact round trips on the reference examples and by property."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labctl.router.asus import codec

# Examples from asus-router-api.md §6 (C writer, UI writer, and the assembled IoT rows).
REFERENCE = [
    ("sdn_rl", "<5>Guest>1>3>3>5>0>0>0>0>0>0>0>0>0>0>0>0>0>WEB>0>0"),
    ("sdn_rl", "<4>IoT>1>3>3>4>0>0>0>0>0>0>0>0>0>0>0>0>0>WEB>0>0>0"),
    ("vlan_rl", "<3>52>0>"),
    ("vlan_rl", "<3>52>0"),
    ("subnet_rl", "<2>br52>192.168.52.1>255.255.255.0>1>192.168.52.2>192.168.52.254>86400>>,>>0>>"),
    ("subnet_rl", "<3>br52>172.16.1.1>255.255.255.0>1>172.16.1.2>172.16.1.254>86400>>"
                  "9.9.9.9,149.112.112.112>>0>>0>0>4>1000>2000>,,>0>>"),
    ("sdn_access_rl", "<0>4"),
    ("security", "<3>pskpsk2>aes>MyPass123>4<13>pskpsk2>aes>MyPass123>4<16>sae>aes>MyPass123>4"
                 "<96>sae>aes>MyPass123>4"),
    ("security", "<7>pskpsk2>aes>KEY>1"),
    ("dut_list", "<04:42:1A:00:00:01>7>>"),
    ("dut_list", "<*>1>"),
    ("bw_limit", "<0>>"),
    ("bw_limit", "<1>1000>2000"),
    ("empty", ""),
]


@pytest.mark.parametrize("kind,text", REFERENCE, ids=[f"{k}-{i}" for i, (k, _) in
                                                      enumerate(REFERENCE)])
def test_reference_examples_round_trip_exactly(kind, text):
    assert codec.dump(codec.parse(text)) == text
    assert codec.parse_sdn(text).dump() == text


def test_sdn_fields_by_position_and_the_ui_prio_field():
    c_row = codec.parse_sdn("<5>Guest>1>3>3>5>0>0>0>0>0>0>0>0>0>0>0>0>0>WEB>0>0").rows[0]
    assert (c_row["idx"], c_row["name"], c_row["vlan_idx"], c_row["subnet_idx"],
            c_row["apg_idx"], c_row["createby"], c_row["mswan_idx"]) == \
        ("5", "Guest", "3", "3", "5", "WEB", "0")
    assert c_row["prio"] == ""  # 22-field C row: no prio
    ui_row = codec.parse_sdn("<4>IoT>1>3>3>4>0>0>0>0>0>0>0>0>0>0>0>0>0>WEB>0>0>0").rows[0]
    assert ui_row["prio"] == "0"


def test_editing_one_field_keeps_the_3006_tail_and_unknown_extras():
    text = ("<3>br52>172.16.1.1>255.255.255.0>1>172.16.1.2>172.16.1.254>86400>>"
            "9.9.9.9,149.112.112.112>>0>>0>0>4>1000>2000>,,>0>>EXTRA1>EXTRA2")
    t = codec.parse_subnet(text)
    row = t.rows[0]
    assert row["dns"] == "9.9.9.9,149.112.112.112" and row["dhcp_lease"] == "86400"
    row["dns"] = "1.1.1.1"
    out = t.dump()
    assert out == text.replace("9.9.9.9,149.112.112.112", "1.1.1.1")
    assert len(row.fields) == 23
    assert row.as_dict()["_extra22"] == "EXTRA2"


def test_delimiters_are_refused_in_values():
    t = codec.parse_vlan("<3>52>0>")
    with pytest.raises(codec.RecordError):
        t.rows[0]["vid"] = "5<2"
    with pytest.raises(codec.RecordError):
        t.append(["4", "60>", "0"])
    assert t.dump() == "<3>52>0>"


def test_security_and_dut_builders_match_the_reference_shape():
    assert codec.build_security("wpa-wpa2-personal", "MyPass123", 4) == (
        "<3>pskpsk2>aes>MyPass123>4<13>pskpsk2>aes>MyPass123>4<16>sae>aes>MyPass123>4"
        "<96>sae>aes>MyPass123>4")
    assert codec.build_dut_list("2.4") == "<*>1>"
    assert codec.build_dut_list("2.4+5+6") == "<*>19>"
    assert codec.mask_band(87) == "2.4+5+6"  # the live capture's <*>87>
    assert codec.mask_band(codec.band_mask("5+6")) == "5+6"


def test_emulator_initial_nvram_round_trips():
    from labctl.router.asus.emulator import initial_nvram

    nv = initial_nvram()
    for k in ("sdn_rl", "vlan_rl", "subnet_rl", "sdn_access_rl", "apg1_security",
              "apg1_dut_list", "apg1_bw_limit"):
        assert codec.dump(codec.parse(nv[k])) == nv[k]
    rows = codec.parse_sdn(nv["sdn_rl"]).rows
    assert [r["name"] for r in rows] == ["DEFAULT", "Guest"]


ANY_TEXT = st.text(alphabet=st.sampled_from(list("<>ab01,. %é")), max_size=60)
FIELD = st.text(alphabet=st.characters(blacklist_characters="<>", blacklist_categories=("Cs",)),
                max_size=12)


@settings(max_examples=300, deadline=None)
@given(ANY_TEXT)
def test_property_any_string_round_trips(text):
    assert codec.dump(codec.parse(text)) == text


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(FIELD, min_size=1, max_size=25), max_size=8))
def test_property_rows_survive_dump_then_parse(rows):
    t = codec.Table([], "", codec.SDN_FIELDS)
    for r in rows:
        t.append(r)
    back = codec.parse_sdn(t.dump())
    assert [r.fields for r in back.rows] == rows


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(FIELD, min_size=13, max_size=22), min_size=1, max_size=5),
       st.integers(min_value=0, max_value=12), FIELD)
def test_property_setting_a_field_changes_only_that_field(rows, pos, value):
    text = "".join("<" + ">".join(r) for r in rows)
    t = codec.parse_subnet(text)
    name = codec.SUBNET_FIELDS[pos]
    t.rows[0][name] = value
    back = codec.parse_subnet(t.dump())
    expect = [list(r) for r in rows]
    expect[0][pos] = value
    assert [r.fields for r in back.rows] == expect
