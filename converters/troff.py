"""troff (man page) source → plain text, by careful regular expressions rather than a typesetter.

What survives is what a reader of the rendered page reads: running text, the text arguments of
formatting macros (``.SH NAME`` → ``NAME``, ``.BR ls (1)`` → ``ls(1)``), table cells and special
characters as Unicode (``\\(em`` → —, ``\\-`` → -, ``\\[u00E9]`` → é). Comments, macro definitions,
requests (``.sp``, ``.in``, ``.if`` …), font and size changes, motions and registers are dropped.
Paragraph macros become blank lines.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["troff_to_text"]

# Macros whose arguments are text set in one font: join the arguments with spaces.
_TEXT_MACROS = {"SH", "SS", "B", "I", "SM", "SB", "UR", "UE", "MT", "ME", "URL", "MTO", "Sh", "Ss", "Nm", "Nd",
                "Xr", "Op", "Fl", "Ar", "Cm", "Pa", "Em", "Sy", "Dq", "Qq", "Sq", "Pq", "Ql", "Ev", "Va", "Fn",
                "Fa", "Ft", "Dv", "Er", "Ic", "Li", "It", "D1", "Dl", "Ad", "An", "Lb", "St", "Tn", "Ux",
                "Bx", "Ox", "Nx", "Fx", "At", "Aq", "Bq", "Brq", "Ms", "Mt", "Lk", "Vt", "Cd", "Rs", "%A",
                "%T", "%B", "%J", "%N", "%V", "%D", "%O", "%P"}
# Macros that alternate two fonts between arguments, which are set without spaces between them.
_ALTERNATING = {"BR", "BI", "IB", "IR", "RB", "RI"}
# Macros whose first argument is a tag to keep (the second is an indent).
_TAG_MACROS = {"IP"}
# Macros that start a paragraph or space: a blank line.
_BREAKS = {"PP", "LP", "P", "TP", "TQ", "IP", "HP", "sp", "Sp", "Pp", "SH", "SS", "Sh", "Ss", "EX", "EE", "nf",
           "fi", "RS", "RE", "Bl", "El", "Bd", "Ed"}
# mdoc macro names that appear as words inside other mdoc macros' arguments (``.Op Fl a Ar file``).
_MDOC_CALLABLE = {"Fl", "Ar", "Op", "Cm", "Pa", "Xr", "Ns", "Li", "Em", "Sy", "Dq", "Qq", "Sq", "Pq", "Ql",
                  "Ev", "Va", "Fn", "Fa", "Ft", "Dv", "Er", "Ic", "Ad", "Oo", "Oc", "Bq", "Brq", "Aq", "Nm",
                  "No", "Pf", "Sx", "Vt", "Cd", "Lk", "Mt"}
_SKIP_BLOCKS = {"de", "de1", "am", "am1", "ig"}  # blocks ending with ".."

_GLYPHS = {
    "em": "—", "en": "–", "hy": "-", "mi": "-", "bu": "•", "aq": "'", "dq": '"', "lq": "“", "rq": "”",
    "oq": "‘", "cq": "’", "Bq": "„", "bq": "‚", "Fo": "«", "Fc": "»", "fo": "‹", "fc": "›",
    "co": "©", "rg": "®", "tm": "™", "de": "°", "+-": "±", "mu": "×", "di": "÷", "<=": "≤", ">=": "≥",
    "!=": "≠", "==": "≡", "~=": "≅", "->": "→", "<-": "←", "<>": "↔", "ua": "↑", "da": "↓", "ra": "⟩",
    "la": "⟨", "rs": "\\", "sl": "/", "ha": "^", "ti": "~", "ga": "`", "at": "@", "sh": "#", "Do": "$",
    "pd": "∂", "is": "∫", "if": "∞", "sr": "√", "fm": "′", "sd": "″", "dg": "†", "dd": "‡", "bv": "|",
    "or": "|", "ba": "|", "12": "½", "14": "¼", "34": "¾", "mc": "µ", "sc": "§", "ps": "¶", "ss": "ß",
    "ct": "¢", "Po": "£", "Eu": "€", "eu": "€", "Ye": "¥", "ff": "ff", "fi": "fi", "fl": "fl",
    "*a": "α", "*b": "β", "*g": "γ", "*d": "δ", "*e": "ε", "*l": "λ", "*m": "μ", "*p": "π", "*s": "σ",
    "*t": "τ", "*W": "Ω", "*S": "Σ", "*D": "Δ", "ob": "○", "sq": "□", "lh": "☜", "rh": "☞",
    "pl": "+", "eq": "=", "lB": "[", "rB": "]", "lC": "{", "rC": "}", "r!": "¡",
    "r?": "¿", "no": "¬", "AE": "Æ", "ae": "æ", "OE": "Œ", "oe": "œ", "/o": "ø", "/O": "Ø",
}
_ACCENTS = {"'": "\u0301", "`": "\u0300", "^": "\u0302", ":": "\u0308", "~": "\u0303", ",": "\u0327",
            "o": "\u030a", "v": "\u030c"}
_STRINGS = {"lq": "“", "rq": "”", "R": "®", "Tm": "™", "Lq": "“", "Rq": "”", "S": "", "N": "", "aq": "'"}

_NAME = r"(?:\[[^\]]*\]|\(..|.)"  # a troff name: [long], (xy or one character
_ESCAPE = re.compile(
    r"\\(?:"
    r"(?P<font>f" + _NAME + r")"
    r"|(?P<size>s(?:[+-]?\d|[+-]?\(\d\d|[+-]?\[\d+\]|'[+-]?\d+'))"
    r"|\*(?P<string>" + _NAME + r")"
    r"|\((?P<glyph2>..)"
    r"|\[(?P<glyphn>[^\]]*)\]"
    r"|(?P<arg>[hvwoNXbDlLSxRZAB])'[^']*'"
    r"|(?P<reg>[nmgMkFY]" + _NAME + r")"
    r"|(?P<one>.)"
    r")", re.DOTALL)
_ONE = {"e": "\\", "\\": "\\", "-": "-", " ": " ", "~": " ", "0": " ", ".": ".", "'": "'", "`": "`",
        "t": "\t", "\t": "\t", "E": "\\"}
_ARGS = re.compile(r'"((?:[^"]|"")*)"?|(\S+)')
_CONTROL = re.compile(r"^[.']\s*(\S*)\s*(.*)$")


def _glyph(name: str) -> str:
    if name in _GLYPHS:
        return _GLYPHS[name]
    if re.fullmatch(r"u[0-9A-Fa-f]{4,6}(?:_[0-9A-Fa-f]{4,6})*", name):
        return "".join(chr(int(code, 16)) for code in name[1:].split("_"))
    if name.startswith("char") and name[4:].isdigit():
        return chr(int(name[4:]))
    if len(name) == 2 and name[0] in _ACCENTS:
        return unicodedata.normalize("NFC", name[1] + _ACCENTS[name[0]])
    return ""


def _replace(match: re.Match[str]) -> str:
    if match["font"] or match["size"] or match["arg"] or match["reg"]:
        return ""
    if match["string"] is not None:
        return _STRINGS.get(match["string"].strip("[]").lstrip("("), "")
    if match["glyph2"] is not None:
        return _glyph(match["glyph2"])
    if match["glyphn"] is not None:
        return _glyph(match["glyphn"])
    return _ONE.get(match["one"], "")  # \& \| \^ \% \c \: \, \/ \) \{ \} \a \d \u \z \r …: nothing visible


def _escapes(text: str) -> str:
    return _ESCAPE.sub(_replace, text)


def _drop_comment(line: str) -> str:
    """``line`` without a ``\\"`` or ``\\#`` comment (an escaped backslash ``\\\\`` does not start one)."""
    i = 0
    while True:
        i = line.find("\\", i)
        if i < 0 or i + 1 >= len(line):
            return line
        if line[i + 1] in '"#':
            return line[:i]
        i += 2


def _args(text: str) -> list[str]:
    return [m[1].replace('""', '"') if m[1] is not None else m[2] for m in _ARGS.finditer(text)]


def troff_to_text(source: str) -> str:
    """The readable text of a man page's troff source."""
    lines: list[str] = []
    pending = ""
    for raw in source.splitlines():  # join lines continued with a trailing backslash
        if raw.endswith("\\{\\"):  # ".if n \{\": a conditional block opens; its body follows on own lines
            raw = raw[:-1]
        elif raw.endswith("\\") and not raw.endswith("\\\\"):
            pending += raw[:-1]
            continue
        lines.append(pending + raw)
        pending = ""
    if pending:
        lines.append(pending)

    out: list[str] = []
    skipping = False
    table = ""  # "" outside tables, "format" before a table's data, "data" inside it
    for line in lines:
        if skipping:
            if line.strip().startswith(".."):
                skipping = False
            continue
        line = _drop_comment(line)
        control = _CONTROL.match(line)
        if table == "format":
            if line.rstrip().endswith("."):
                table = "data"
            continue
        if control:
            name, rest = control.group(1), control.group(2)
            if name in _SKIP_BLOCKS:
                skipping = True
                continue
            if name == "TS":
                table = "format"
                continue
            if name in ("TE", "T&"):
                table = "format" if name == "T&" else ""
                continue
            if name in _BREAKS:
                out.append("")
            args = _args(rest)
            if name in _ALTERNATING:
                out.append(_escapes("".join(args)))
            elif name in _TAG_MACROS:
                if args:
                    out.append(_escapes(args[0]))
            elif name in _TEXT_MACROS:
                words = [a for a in args if a not in _MDOC_CALLABLE] if name[0].isupper() and \
                    name[1:].islower() else args
                if words:
                    out.append(_escapes(" ".join(words)))
            continue
        if table == "data":
            stripped = line.strip()
            if stripped in ("_", "=", "T{", "T}"):
                continue
            line = line.replace("T{", "").replace("T}", "")
        out.append(_escapes(line).rstrip())
    text = "\n".join(out)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n" if text.strip() else ""
