"""SentencePiece's precompiled normalizer (Kudo & Richardson 2018, sec. 3.3): a character map in a trie.

A SentencePiece model carries its normalization rules (T5's: `nmt_nfkc`, Unicode NFKC plus a few NMT-specific
rules: control characters dropped, every kind of space made ' ') compiled into one binary blob, the
`precompiled_charsmap`, which tokenizer.json files keep base64-encoded in a `Precompiled` normalizer:

    u32 little-endian  trie_size (bytes)
    trie_size bytes    a darts-clone double-array trie (Yata et al. 2007): u32 units, keys = UTF-8 source strings
    the rest           the replacement strings, each ending in a NUL byte; a trie value is a byte offset here

A key is looked up byte by byte from the root: the next node is `node ^ offset(unit) ^ byte`, valid while that
unit's label equals the byte; a unit with its leaf bit set marks a complete key, whose value sits in the unit
at `node ^ offset(unit)`.

The text is rewritten as the `tokenizers` library (what transformers' T5TokenizerFast runs) does, grapheme
cluster (Unicode UAX #29) by grapheme cluster: a cluster shorter than 6 UTF-8 bytes is replaced by the replacement
of the first (shortest) key that prefixes it, when one does — the rest of the cluster is dropped; otherwise each
character is replaced by its own entry, or kept. (SentencePiece itself replaces the longest matching prefix, byte
position by byte position; the two agree except on some multi-character clusters, e.g. a letter with two combining
accents: `tokenizers` is followed here because SD3's pipeline runs it.)
"""

from __future__ import annotations

import struct
import unicodedata

from diffx.errors import CheckpointError

LEAF_BIT = 1 << 8
# Grapheme clusters this long (in UTF-8 bytes) or longer are rewritten character by character.
MAX_CLUSTER_BYTES = 6


class DoubleArray:
    """darts-clone's double-array trie, read-only: `prefixes(key)` are the values of the keys that prefix `key`."""

    def __init__(self, units: list[int]):
        self.units = units

    @staticmethod
    def offset(unit: int) -> int:
        # 22 bits of offset, shifted left by 8 more when bit 9 says the offset is "extended".
        return (unit >> 10) << ((unit & (1 << 9)) >> 6)

    @staticmethod
    def label(unit: int) -> int:
        # The byte that leads here; bit 31 set marks a leaf unit (then this never equals a byte).
        return unit & ((1 << 31) | 0xFF)

    def prefixes(self, key: bytes) -> list[int]:
        """The values of every key in the trie that is a prefix of `key`, shortest first."""
        node = self.offset(self.units[0])
        values = []
        for byte in key:
            if byte == 0:
                break
            node ^= byte
            if node >= len(self.units) or self.label(self.units[node]) != byte:
                break
            unit = self.units[node]
            node ^= self.offset(unit)
            if unit & LEAF_BIT:
                values.append(self.units[node] & ((1 << 31) - 1))
        return values


# UAX #29's grapheme-break properties that Unicode's general categories do not give (Unicode 15).
OTHER_EXTEND = ((0x09BE, 0x09BE), (0x09D7, 0x09D7), (0x0B3E, 0x0B3E), (0x0B57, 0x0B57), (0x0BBE, 0x0BBE),
                (0x0BD7, 0x0BD7), (0x0CC2, 0x0CC2), (0x0CD5, 0x0CD6), (0x0D3E, 0x0D3E), (0x0D57, 0x0D57),
                (0x0DCF, 0x0DCF), (0x0DDF, 0x0DDF), (0x1B35, 0x1B35), (0x200C, 0x200D), (0x302E, 0x302F),
                (0xFF9E, 0xFF9F), (0x1133E, 0x1133E), (0x11357, 0x11357), (0x114B0, 0x114B0), (0x114BD, 0x114BD),
                (0x115AF, 0x115AF), (0x11930, 0x11930), (0x1D165, 0x1D165), (0x1D16E, 0x1D172),
                (0x1F3FB, 0x1F3FF), (0xE0020, 0xE007F))
PREPEND = ((0x0600, 0x0605), (0x06DD, 0x06DD), (0x070F, 0x070F), (0x0890, 0x0891), (0x08E2, 0x08E2),
           (0x0D4E, 0x0D4E), (0x110BD, 0x110BD), (0x110CD, 0x110CD), (0x111C2, 0x111C3), (0x1193F, 0x1193F),
           (0x11941, 0x11941), (0x11A3A, 0x11A3A), (0x11A84, 0x11A89), (0x11D46, 0x11D46), (0x11F02, 0x11F02))
# Spacing vowel signs (Mc) that UAX #29 does not attach to the letter before them (Myanmar, Tai Tham, ...).
NOT_SPACING_MARK = ((0x102B, 0x102C), (0x1038, 0x1038), (0x1062, 0x1064), (0x1067, 0x106D), (0x1083, 0x1083),
                    (0x1087, 0x108C), (0x108F, 0x108F), (0x109A, 0x109C), (0x1A61, 0x1A61), (0x1A63, 0x1A64),
                    (0xAA7B, 0xAA7B), (0xAA7D, 0xAA7D), (0x11720, 0x11721))
HANGUL_JAMO = {"L": ((0x1100, 0x115F), (0xA960, 0xA97C)), "V": ((0x1160, 0x11A7), (0xD7B0, 0xD7C6)),
               "T": ((0x11A8, 0x11FF), (0xD7CB, 0xD7FB))}
# Hangul sequences that stay one cluster (UAX #29, GB6-GB8): (previous, next).
HANGUL_JOINS = {("L", "L"), ("L", "V"), ("L", "LV"), ("L", "LVT"), ("LV", "V"), ("LV", "T"), ("V", "V"), ("V", "T"),
                ("LVT", "T"), ("T", "T")}


def _table(*groups: tuple[str, tuple[tuple[int, int], ...]]) -> dict[int, str]:
    """Code point -> property for ranges of code points; a later group overrides an earlier one."""
    return {code: kind for kind, ranges in groups for first, last in ranges for code in range(first, last + 1)}


# The properties read from these lists, before the general category is asked (0x0E33, 0x0EB3: Lo spacing marks).
LISTED = _table(("Other", NOT_SPACING_MARK), ("SpacingMark", ((0x0E33, 0x0E33), (0x0EB3, 0x0EB3))),
                *HANGUL_JAMO.items(), ("Extend", OTHER_EXTEND), ("Prepend", PREPEND))


def grapheme_break(char: str) -> str:
    """A character's grapheme-cluster-break property (UAX #29, table 2), without the emoji and regional-indicator
    ones: those characters take 4 UTF-8 bytes, so any cluster holding one is rewritten character by character."""
    code, category = ord(char), unicodedata.category(char)
    if char in ("\r", "\n"):
        return char
    if code in LISTED:
        return LISTED[code]
    if 0xAC00 <= code <= 0xD7A3:  # precomposed syllables: LV every 28 code points, LVT (with a final) between
        return "LV" if (code - 0xAC00) % 28 == 0 else "LVT"
    if category in ("Mn", "Me"):
        return "Extend"
    if category in ("Cc", "Cf", "Zl", "Zp"):
        return "Control"
    return "SpacingMark" if category == "Mc" else "Other"


def _joins(previous: str, following: str) -> bool:
    """Whether no grapheme boundary lies between two characters of these break properties (UAX #29, GB3-GB9b)."""
    if (previous, following) == ("\r", "\n"):
        return True
    if previous in ("\r", "\n", "Control") or following in ("\r", "\n", "Control"):
        return False
    return following in ("Extend", "SpacingMark") or previous == "Prepend" or (previous, following) in HANGUL_JOINS


def grapheme_clusters(text: str) -> list[str]:
    """The text cut into extended grapheme clusters (UAX #29), which is how the rewrite walks it."""
    clusters: list[str] = []
    previous = ""
    for char in text:
        kind = grapheme_break(char)
        if clusters and _joins(previous, kind):
            clusters[-1] += char
        else:
            clusters.append(char)
        previous = kind
    return clusters


class Precompiled:
    """The `Precompiled` normalizer of a tokenizer.json: SentencePiece's character map, applied to a string."""

    def __init__(self, charsmap: bytes):
        if not charsmap:  # a model trained without normalization rules: nothing to rewrite
            self.trie, self.replacements = DoubleArray([0]), b""
            return
        if len(charsmap) < 4:
            raise CheckpointError("tokenizer.json's precompiled_charsmap is truncated; use the model's own file")
        (trie_size,) = struct.unpack_from("<I", charsmap)
        if trie_size % 4 or 4 + trie_size > len(charsmap):
            raise CheckpointError("tokenizer.json's precompiled_charsmap is corrupt; use the model's own file")
        self.trie = DoubleArray(list(struct.unpack_from(f"<{trie_size // 4}I", charsmap, 4)))
        self.replacements = charsmap[4 + trie_size:]

    def replacement(self, chunk: str) -> str | None:
        """The replacement of the first (shortest) key that prefixes `chunk`; None when no key does."""
        found = self.trie.prefixes(chunk.encode("utf-8"))
        if not found:
            return None
        start = found[0]
        end = self.replacements.index(b"\0", start)
        return self.replacements[start:end].decode("utf-8")

    def __call__(self, text: str) -> str:
        out = []
        for cluster in grapheme_clusters(text):
            whole = self.replacement(cluster) if len(cluster.encode("utf-8")) < MAX_CLUSTER_BYTES else None
            if whole is not None:
                out.append(whole)
                continue
            for char in cluster:
                replaced = self.replacement(char)
                out.append(char if replaced is None else replaced)
        return "".join(out)
