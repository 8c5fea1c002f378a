"""The library of focal code the demo's test-generation and coverage tasks are built on.

Each template is real, importable Python with placeholders: `__FN__` (the
function or class name), `__Pn__` (parameter names) and `__Kn__` (constants).
Names and constants are drawn per row, so ~30 templates give hundreds of
distinct focal functions; renaming only the identifiers is how near-duplicates
are made. Statements are kept on one line each so that traced line coverage
and coverage.py agree on which lines are statements.

Cases are Python expressions whose expected values are computed by running the
focal code, so a "good" test suite is correct by construction.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class Template:
    key: str
    fn_names: tuple[str, ...]
    source: str
    # Case argument lists (source text, placeholders allowed). `edges` are the
    # boundary and error cases a thorough suite must cover.
    cases: tuple[str, ...]
    edges: tuple[str, ...]
    params: dict[str, tuple[str, ...]] = field(default_factory=dict)
    consts: Callable[[random.Random], dict[str, str]] = lambda rng: {}
    # Class templates give cases as "setup; setup; expression" scripts with `obj`.
    is_class: bool = False


def _k(**choices: tuple) -> Callable[[random.Random], dict[str, str]]:
    def draw(rng: random.Random) -> dict[str, str]:
        return {name: repr(rng.choice(values)) for name, values in choices.items()}

    return draw


TEMPLATES: tuple[Template, ...] = (
    Template(
        key="slugify",
        fn_names=("slugify", "make_slug", "to_slug", "title_to_slug"),
        params={"__P1__": ("text", "title", "raw")},
        consts=_k(__K1__=("-", "_"), __K2__=(20, 32, 40)),
        source='''
def __FN__(__P1__, max_len=__K2__):
    """Lower-case `__P1__`, join alphanumeric runs with __K1__ and cap the length."""
    words = []
    current = ""
    for ch in __P1__.lower():
        if ch.isalnum():
            current += ch
        elif current:
            words.append(current)
            current = ""
    if current:
        words.append(current)
    slug = __K1__.join(words)
    if len(slug) > max_len:
        slug = slug[:max_len].rstrip(__K1__)
    return slug
''',
        cases=("'Hello World'", "'  Python   Testing 101 '", "'QE agents: a fleet!'"),
        edges=("''", "'!!!'", "'a' * 50", "'one two three four five six seven eight nine'", "'Already-Slugged', max_len=5"),
    ),
    Template(
        key="clamp",
        fn_names=("clamp", "bound", "limit_to_range", "clip_value"),
        params={"__P1__": ("value", "x", "n"), "__P2__": ("low", "lo", "minimum"), "__P3__": ("high", "hi", "maximum")},
        source='''
def __FN__(__P1__, __P2__, __P3__):
    """Return `__P1__` limited to the closed range [__P2__, __P3__]."""
    if __P2__ > __P3__:
        raise ValueError("empty range")
    if __P1__ < __P2__:
        return __P2__
    if __P1__ > __P3__:
        return __P3__
    return __P1__
''',
        cases=("5, 0, 10", "15, 0, 10", "2.5, 1.0, 3.0"),
        edges=("-3, 0, 10", "0, 0, 10", "10, 0, 10", "7, 7, 7", "1, 10, 0"),
    ),
    Template(
        key="is_palindrome",
        fn_names=("is_palindrome", "reads_same_backwards", "palindrome_check"),
        params={"__P1__": ("text", "s", "phrase")},
        source='''
def __FN__(__P1__):
    """True when `__P1__` reads the same both ways, ignoring case and punctuation."""
    cleaned = [ch.lower() for ch in __P1__ if ch.isalnum()]
    left, right = 0, len(cleaned) - 1
    while left < right:
        if cleaned[left] != cleaned[right]:
            return False
        left += 1
        right -= 1
    return True
''',
        cases=("'racecar'", "'A man, a plan, a canal: Panama'", "'pytest'"),
        edges=("''", "'a'", "'ab'", "'!!'", "'No lemon, no melon'"),
    ),
    Template(
        key="fizzbuzz",
        fn_names=("fizzbuzz", "fizz_buzz_word", "label_number"),
        params={"__P1__": ("n", "number", "i")},
        consts=lambda rng: dict(
            zip(("__K1__", "__K2__", "__K3__", "__K4__"),
                map(repr, rng.choice([(3, 5, "Fizz", "Buzz"), (3, 7, "Foo", "Bar"), (2, 5, "Even", "Five"), (4, 6, "Ping", "Pong")])))
        ),
        source='''
def __FN__(__P1__):
    """Word for `__P1__`: __K3__ for multiples of __K1__, __K4__ for __K2__, both for both."""
    if __P1__ <= 0:
        raise ValueError("n must be positive")
    word = ""
    if __P1__ % __K1__ == 0:
        word += __K3__
    if __P1__ % __K2__ == 0:
        word += __K4__
    return word or str(__P1__)
''',
        cases=("1", "__K1__ * 2", "__K2__", "__K1__ * __K2__"),
        edges=("0", "-3", "__K1__ * __K2__ * 4", "__K1__ + __K2__ + 1"),
    ),
    Template(
        key="parse_key_values",
        fn_names=("parse_key_values", "parse_pairs", "parse_options", "kv_parse"),
        params={"__P1__": ("line", "text", "spec")},
        consts=_k(__K1__=(";", ","), __K2__=("=", ":")),
        source='''
def __FN__(__P1__):
    """Parse 'a__K2__1__K1__ b__K2__2' into a dict; blank segments are skipped."""
    result = {}
    for part in __P1__.split(__K1__):
        part = part.strip()
        if not part:
            continue
        if __K2__ not in part:
            raise ValueError(f"missing separator in {part!r}")
        key, value = part.split(__K2__, 1)
        result[key.strip()] = value.strip()
    return result
''',
        cases=("'a__K2__1__K1__b__K2__2'", "' host __K2__ localhost __K1__ port__K2__8080 '"),
        edges=("''", "'__K1____K1__'", "'novalue'", "'url__K2__http__K2__x'", "'k__K2__'"),
    ),
    Template(
        key="chunk",
        fn_names=("chunk", "batched", "split_into_chunks", "partition"),
        params={"__P1__": ("items", "values", "seq"), "__P2__": ("size", "n", "width")},
        source='''
def __FN__(__P1__, __P2__):
    """Split `__P1__` into lists of at most `__P2__` elements, keeping order."""
    if __P2__ <= 0:
        raise ValueError("size must be positive")
    out = []
    for start in range(0, len(__P1__), __P2__):
        out.append(list(__P1__[start:start + __P2__]))
    return out
''',
        cases=("[1, 2, 3, 4, 5], 2", "'abcdef', 3", "list(range(7)), 7"),
        edges=("[], 3", "[1, 2], 5", "[1, 2, 3], 0", "[1], -1", "[1, 2, 3], 1"),
    ),
    Template(
        key="median",
        fn_names=("median", "middle_value", "median_of"),
        params={"__P1__": ("values", "numbers", "samples")},
        source='''
def __FN__(__P1__):
    """Median of a non-empty sequence of numbers."""
    if not __P1__:
        raise ValueError("median of empty data")
    ordered = sorted(__P1__)
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[mid]
    return (ordered[mid - 1] + ordered[mid]) / 2
''',
        cases=("[3, 1, 2]", "[4, 1, 3, 2]", "[10, 20]"),
        edges=("[]", "[7]", "[-5, -1, -3]", "[1.5, 2.5]", "[2, 2, 2, 2]"),
    ),
    Template(
        key="roman_to_int",
        fn_names=("roman_to_int", "parse_roman", "from_roman"),
        params={"__P1__": ("numeral", "s", "roman")},
        source='''
def __FN__(__P1__):
    """Integer value of a Roman numeral such as 'MCMXC'."""
    values = {"I": 1, "V": 5, "X": 10, "L": 50, "C": 100, "D": 500, "M": 1000}
    if not __P1__:
        raise ValueError("empty numeral")
    total = 0
    for i, ch in enumerate(__P1__.upper()):
        if ch not in values:
            raise ValueError(f"bad digit {ch!r}")
        if i + 1 < len(__P1__) and values[ch] < values.get(__P1__[i + 1].upper(), 0):
            total -= values[ch]
        else:
            total += values[ch]
    return total
''',
        cases=("'III'", "'XIV'", "'MCMXC'"),
        edges=("''", "'iv'", "'MMXXIV'", "'ABC'", "'IX'"),
    ),
    Template(
        key="int_to_roman",
        fn_names=("int_to_roman", "to_roman", "roman_numeral"),
        params={"__P1__": ("number", "n", "value")},
        source='''
def __FN__(__P1__):
    """Roman numeral for 1 <= `__P1__` <= 3999."""
    if not 0 < __P1__ < 4000:
        raise ValueError("out of range")
    table = [(1000, "M"), (900, "CM"), (500, "D"), (400, "CD"), (100, "C"), (90, "XC"), (50, "L"), (40, "XL"), (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I")]
    parts = []
    for amount, symbol in table:
        count, __P1__ = divmod(__P1__, amount)
        parts.append(symbol * count)
    return "".join(parts)
''',
        cases=("3", "14", "1990"),
        edges=("0", "4000", "1", "3999", "-7"),
    ),
    Template(
        key="word_frequencies",
        fn_names=("word_frequencies", "count_words", "word_histogram"),
        params={"__P1__": ("text", "document", "body")},
        consts=_k(__K1__=(1, 2, 3)),
        source='''
def __FN__(__P1__, min_length=__K1__):
    """Case-insensitive counts of words of at least `min_length` letters."""
    counts = {}
    for raw in __P1__.split():
        word = raw.strip(".,;:!?\\"'()").lower()
        if len(word) < min_length:
            continue
        counts[word] = counts.get(word, 0) + 1
    return counts
''',
        cases=("'the cat and the hat'", "'Tests, tests, TESTS!'"),
        edges=("''", "'a b c'", "'a b c', min_length=1", "'   '", "'(quoted) \"words\"'"),
    ),
    Template(
        key="flatten",
        fn_names=("flatten", "flatten_list", "deep_flatten"),
        params={"__P1__": ("nested", "items", "tree")},
        source='''
def __FN__(__P1__):
    """Flatten arbitrarily nested lists and tuples into one list."""
    flat = []
    for item in __P1__:
        if isinstance(item, (list, tuple)):
            flat.extend(__FN__(item))
        else:
            flat.append(item)
    return flat
''',
        cases=("[1, [2, 3], 4]", "[[1, [2, [3, [4]]]]]", "[(1, 2), [3]]"),
        edges=("[]", "[[], [[]]]", "['ab', ['cd']]", "[None, [0]]"),
    ),
    Template(
        key="rle_encode",
        fn_names=("rle_encode", "run_length_encode", "compress_runs"),
        params={"__P1__": ("text", "data", "s")},
        source='''
def __FN__(__P1__):
    """Run-length encode: 'aaab' -> 'a3b1'."""
    if not __P1__:
        return ""
    out = []
    current, count = __P1__[0], 1
    for ch in __P1__[1:]:
        if ch == current:
            count += 1
        else:
            out.append(f"{current}{count}")
            current, count = ch, 1
    out.append(f"{current}{count}")
    return "".join(out)
''',
        cases=("'aaab'", "'abc'", "'zzzzzzzzzzzz'"),
        edges=("''", "'a'", "'aabbaa'", "'  '"),
    ),
    Template(
        key="is_valid_ipv4",
        fn_names=("is_valid_ipv4", "valid_ip", "looks_like_ipv4"),
        params={"__P1__": ("address", "ip", "host")},
        source='''
def __FN__(__P1__):
    """True for dotted-quad IPv4 addresses without leading zeros."""
    parts = __P1__.split(".")
    if len(parts) != 4:
        return False
    for part in parts:
        if not part.isdigit():
            return False
        if len(part) > 1 and part[0] == "0":
            return False
        if int(part) > 255:
            return False
    return True
''',
        cases=("'192.168.0.1'", "'10.0.0.255'", "'8.8.8.8'"),
        edges=("'256.1.1.1'", "'1.2.3'", "'01.2.3.4'", "'a.b.c.d'", "''", "'0.0.0.0'"),
    ),
    Template(
        key="parse_duration",
        fn_names=("parse_duration", "duration_seconds", "to_seconds"),
        params={"__P1__": ("spec", "text", "duration")},
        source='''
def __FN__(__P1__):
    """Seconds in a duration like '1h30m' or '45s' (units h, m, s)."""
    units = {"h": 3600, "m": 60, "s": 1}
    total = 0
    number = ""
    for ch in __P1__.strip():
        if ch.isdigit():
            number += ch
        elif ch in units and number:
            total += int(number) * units[ch]
            number = ""
        else:
            raise ValueError(f"bad duration {__P1__!r}")
    if number:
        raise ValueError("trailing number without unit")
    return total
''',
        cases=("'1h30m'", "'45s'", "'2h'"),
        edges=("''", "'90'", "'1x'", "'h'", "' 10m5s '", "'0s'"),
    ),
    Template(
        key="caesar",
        fn_names=("caesar", "shift_letters", "rotate_text"),
        params={"__P1__": ("text", "message", "plain")},
        consts=_k(__K1__=(1, 3, 13)),
        source='''
def __FN__(__P1__, shift=__K1__):
    """Shift ASCII letters by `shift`, preserving case; other characters pass through."""
    out = []
    for ch in __P1__:
        if "a" <= ch <= "z":
            out.append(chr((ord(ch) - 97 + shift) % 26 + 97))
        elif "A" <= ch <= "Z":
            out.append(chr((ord(ch) - 65 + shift) % 26 + 65))
        else:
            out.append(ch)
    return "".join(out)
''',
        cases=("'abc'", "'Hello, World!'", "'xyz'"),
        edges=("''", "'Zz'", "'abc', shift=-1", "'abc', shift=26", "'123'"),
    ),
    Template(
        key="lcm_of",
        fn_names=("lcm_of", "least_common_multiple", "lcm_all"),
        params={"__P1__": ("numbers", "values", "ints")},
        source='''
def __FN__(__P1__):
    """Least common multiple of positive integers."""
    if not __P1__:
        raise ValueError("need at least one number")
    result = 1
    for n in __P1__:
        if n <= 0:
            raise ValueError("numbers must be positive")
        a, b = result, n
        while b:
            a, b = b, a % b
        result = result * n // a
    return result
''',
        cases=("[4, 6]", "[3, 5, 7]", "[12, 18, 30]"),
        edges=("[]", "[1]", "[0, 3]", "[-2, 4]", "[9, 9]"),
    ),
    Template(
        key="is_prime",
        fn_names=("is_prime", "prime_check", "check_prime"),
        params={"__P1__": ("n", "number", "candidate")},
        source='''
def __FN__(__P1__):
    """Trial-division primality test."""
    if __P1__ < 2:
        return False
    if __P1__ % 2 == 0:
        return __P1__ == 2
    d = 3
    while d * d <= __P1__:
        if __P1__ % d == 0:
            return False
        d += 2
    return True
''',
        cases=("7", "15", "97"),
        edges=("0", "1", "2", "4", "-7", "49"),
    ),
    Template(
        key="moving_average",
        fn_names=("moving_average", "rolling_mean", "sliding_average"),
        params={"__P1__": ("values", "series", "samples"), "__P2__": ("window", "k", "span")},
        source='''
def __FN__(__P1__, __P2__):
    """Averages of each run of `__P2__` consecutive values."""
    if __P2__ <= 0:
        raise ValueError("window must be positive")
    if __P2__ > len(__P1__):
        return []
    total = sum(__P1__[:__P2__])
    out = [total / __P2__]
    for i in range(__P2__, len(__P1__)):
        total += __P1__[i] - __P1__[i - __P2__]
        out.append(total / __P2__)
    return out
''',
        cases=("[1, 2, 3, 4], 2", "[10, 20, 30], 3", "[5, 5, 5, 5], 1"),
        edges=("[], 1", "[1, 2], 3", "[1, 2], 0", "[1, 2, 3], -2"),
    ),
    Template(
        key="dedupe",
        fn_names=("dedupe", "unique_in_order", "remove_duplicates"),
        params={"__P1__": ("items", "values", "seq")},
        source='''
def __FN__(__P1__, key=None):
    """Drop repeated items (compared by `key` if given), keeping first occurrences."""
    seen = set()
    out = []
    for item in __P1__:
        marker = key(item) if key else item
        if marker in seen:
            continue
        seen.add(marker)
        out.append(item)
    return out
''',
        cases=("[1, 2, 1, 3, 2]", "'mississippi'", "['a', 'A', 'b'], key=str.lower"),
        edges=("[]", "[1, 1, 1]", "[3, 2, 1]", "[(1, 'x'), (1, 'y')], key=lambda p: p[0]"),
    ),
    Template(
        key="truncate",
        fn_names=("truncate", "shorten", "ellipsize"),
        params={"__P1__": ("text", "message", "s"), "__P2__": ("limit", "width", "max_chars")},
        consts=_k(__K1__=("...", "…", "~")),
        source='''
def __FN__(__P1__, __P2__, suffix=__K1__):
    """Cut `__P1__` to at most `__P2__` characters, marking the cut with `suffix`."""
    if __P2__ < len(suffix):
        raise ValueError("limit shorter than suffix")
    if len(__P1__) <= __P2__:
        return __P1__
    return __P1__[:__P2__ - len(suffix)].rstrip() + suffix
''',
        cases=("'hello world', 8", "'short', 10", "'pytest fixtures are great', 12"),
        edges=("'', 5", "'exact', 5", "'abc', 0", "'a b c d e', 6", "'hello', 4, suffix=''"),
    ),
    Template(
        key="binary_search",
        fn_names=("binary_search", "find_index", "bisect_find"),
        params={"__P1__": ("items", "sorted_values", "arr"), "__P2__": ("target", "needle", "x")},
        source='''
def __FN__(__P1__, __P2__):
    """Index of `__P2__` in the sorted list `__P1__`, or -1."""
    lo, hi = 0, len(__P1__) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        if __P1__[mid] == __P2__:
            return mid
        if __P1__[mid] < __P2__:
            lo = mid + 1
        else:
            hi = mid - 1
    return -1
''',
        cases=("[1, 3, 5, 7, 9], 7", "[2, 4, 6], 2", "[10, 20, 30, 40], 40"),
        edges=("[], 1", "[5], 5", "[5], 4", "[1, 3, 5], 4", "[1, 3, 5], 99"),
    ),
    Template(
        key="compare_versions",
        fn_names=("compare_versions", "version_cmp", "cmp_semver"),
        params={"__P1__": ("a", "left", "v1"), "__P2__": ("b", "right", "v2")},
        source='''
def __FN__(__P1__, __P2__):
    """-1, 0 or 1 comparing dotted versions numerically ('1.10' > '1.9')."""
    xs = [int(p) for p in __P1__.split(".")]
    ys = [int(p) for p in __P2__.split(".")]
    width = max(len(xs), len(ys))
    xs += [0] * (width - len(xs))
    ys += [0] * (width - len(ys))
    if xs == ys:
        return 0
    return 1 if xs > ys else -1
''',
        cases=("'1.2.3', '1.2.4'", "'1.10', '1.9'", "'2.0', '1.99.99'"),
        edges=("'1.0', '1'", "'1.0.0', '1.0.0'", "'0.0.1', '0.1'", "'1.x', '1.0'"),
    ),
    Template(
        key="percent_change",
        fn_names=("percent_change", "pct_change", "relative_change"),
        params={"__P1__": ("old", "before", "baseline"), "__P2__": ("new", "after", "current")},
        consts=_k(__K1__=(1, 2)),
        source='''
def __FN__(__P1__, __P2__):
    """Change from `__P1__` to `__P2__` in percent, rounded to __K1__ decimals."""
    if __P1__ == 0:
        raise ZeroDivisionError("baseline is zero")
    change = (__P2__ - __P1__) / abs(__P1__) * 100
    return round(change, __K1__)
''',
        cases=("100, 110", "80, 60", "3, 4"),
        edges=("0, 5", "50, 50", "-20, -10", "1, 0"),
    ),
    Template(
        key="normalize_whitespace",
        fn_names=("normalize_whitespace", "squash_spaces", "clean_spaces"),
        params={"__P1__": ("text", "s", "line")},
        source='''
def __FN__(__P1__, keep_newlines=False):
    """Collapse runs of whitespace to one space (or keep single newlines)."""
    if not keep_newlines:
        return " ".join(__P1__.split())
    lines = [" ".join(line.split()) for line in __P1__.splitlines()]
    return "\\n".join(line for line in lines if line)
''',
        cases=("'  a   b  c '", "'tab\\tseparated\\twords'"),
        edges=("''", "'   '", "'one\\n\\n two  \\nthree', keep_newlines=True", "'x\\ny'"),
    ),
    Template(
        key="password_problems",
        fn_names=("password_problems", "check_password", "password_issues"),
        params={"__P1__": ("password", "pw", "secret")},
        consts=_k(__K1__=(8, 10, 12)),
        source='''
def __FN__(__P1__):
    """List of rule violations; an empty list means the password is acceptable."""
    problems = []
    if len(__P1__) < __K1__:
        problems.append("too short")
    if not any(ch.isdigit() for ch in __P1__):
        problems.append("no digit")
    if not any(ch.isupper() for ch in __P1__):
        problems.append("no uppercase letter")
    if __P1__.lower() in {"password", "letmein", "qwerty123"}:
        problems.append("common password")
    return problems
''',
        cases=("'Sup3rSecretPass'", "'short1A'", "'alllowercase99'"),
        edges=("''", "'PASSWORD'", "'Qwerty123'", "'ABCDEFGHIJKLMN'"),
    ),
    Template(
        key="merge_intervals",
        fn_names=("merge_intervals", "merge_ranges", "coalesce_spans"),
        params={"__P1__": ("intervals", "ranges", "spans")},
        source='''
def __FN__(__P1__):
    """Merge overlapping or touching [start, end] pairs; returns sorted tuples."""
    merged = []
    for start, end in sorted(__P1__):
        if start > end:
            raise ValueError(f"inverted interval {(start, end)}")
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged
''',
        cases=("[(1, 3), (2, 6), (8, 10)]", "[(5, 7), (1, 2)]", "[(1, 4), (4, 5)]"),
        edges=("[]", "[(1, 1)]", "[(1, 10), (2, 3)]", "[(3, 1)]"),
    ),
    Template(
        key="camel_to_snake",
        fn_names=("camel_to_snake", "to_snake_case", "snakify"),
        params={"__P1__": ("name", "identifier", "text")},
        source='''
def __FN__(__P1__):
    """'parseHTTPResponse' -> 'parse_http_response'."""
    out = []
    for i, ch in enumerate(__P1__):
        prev_lower = i > 0 and __P1__[i - 1].islower()
        next_lower = i + 1 < len(__P1__) and __P1__[i + 1].islower()
        if ch.isupper() and i > 0 and (prev_lower or next_lower):
            out.append("_")
        out.append(ch.lower())
    return "".join(out)
''',
        cases=("'camelCase'", "'parseHTTPResponse'", "'SimpleTest'"),
        edges=("''", "'already_snake'", "'A'", "'HTTP'", "'getX'"),
    ),
    Template(
        key="apply_discount",
        fn_names=("apply_discount", "discounted_price", "price_after_code"),
        params={"__P1__": ("price", "amount", "subtotal"), "__P2__": ("code", "coupon", "promo")},
        consts=_k(__K1__=(10, 15, 20), __K2__=(5, 25)),
        source='''
def __FN__(__P1__, __P2__=None):
    """Price after a promo code: SAVE__K1__ is __K1__% off, FLAT__K2__ is __K2__ off, never below 0."""
    if __P1__ < 0:
        raise ValueError("negative price")
    if __P2__ is None:
        return round(__P1__, 2)
    if __P2__ == "SAVE__K1__":
        return round(__P1__ * (100 - __K1__) / 100, 2)
    if __P2__ == "FLAT__K2__":
        return round(max(__P1__ - __K2__, 0), 2)
    raise KeyError(__P2__)
''',
        cases=("100", "100, 'SAVE__K1__'", "80, 'FLAT__K2__'"),
        edges=("-1", "3, 'FLAT__K2__'", "0, 'SAVE__K1__'", "10, 'BOGUS'", "19.999"),
    ),
    Template(
        key="bounded_stack",
        fn_names=("BoundedStack", "LimitedStack", "CappedStack"),
        is_class=True,
        consts=_k(__K1__=(2, 3, 5)),
        source='''
class __FN__:
    """LIFO stack that refuses to grow beyond `capacity` items."""

    def __init__(self, capacity=__K1__):
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self._items = []

    def push(self, item):
        if len(self._items) >= self.capacity:
            raise OverflowError("stack is full")
        self._items.append(item)

    def pop(self):
        if not self._items:
            raise IndexError("pop from empty stack")
        return self._items.pop()

    def peek(self):
        return self._items[-1] if self._items else None

    def __len__(self):
        return len(self._items)
''',
        cases=("obj = __FN__(); obj.push(1); obj.push(2); obj.pop()", "obj = __FN__(); obj.push('a'); obj.peek()", "obj = __FN__(); obj.push(1); len(obj)"),
        edges=("obj = __FN__(); obj.pop()", "obj = __FN__(1); obj.push(1); obj.push(2)", "__FN__(0)", "obj = __FN__(); obj.peek()", "obj = __FN__(2); obj.push(1); obj.pop(); len(obj)"),
    ),
    Template(
        key="lru_cache",
        fn_names=("LRUCache", "RecentCache", "BoundedCache"),
        is_class=True,
        consts=_k(__K1__=(2, 3)),
        source='''
class __FN__:
    """Least-recently-used cache holding at most `capacity` keys."""

    def __init__(self, capacity=__K1__):
        self.capacity = capacity
        self._data = {}

    def get(self, key, default=None):
        if key not in self._data:
            return default
        value = self._data.pop(key)
        self._data[key] = value
        return value

    def put(self, key, value):
        self._data.pop(key, None)
        self._data[key] = value
        while len(self._data) > self.capacity:
            oldest = next(iter(self._data))
            del self._data[oldest]

    def keys(self):
        return list(self._data)
''',
        cases=("obj = __FN__(2); obj.put('a', 1); obj.get('a')", "obj = __FN__(2); obj.put('a', 1); obj.put('b', 2); obj.put('c', 3); obj.keys()", "obj = __FN__(); obj.get('missing', 0)"),
        edges=("obj = __FN__(2); obj.put('a', 1); obj.put('b', 2); obj.get('a'); obj.put('c', 3); obj.keys()", "obj = __FN__(1); obj.put('a', 1); obj.put('a', 2); obj.keys()", "obj = __FN__(0); obj.put('a', 1); obj.keys()", "obj = __FN__(); obj.get('nope')"),
    ),
    Template(
        key="bank_account",
        fn_names=("BankAccount", "Wallet", "Ledger"),
        is_class=True,
        consts=_k(__K1__=(0, 100)),
        source='''
class __FN__:
    """Balance that rejects non-positive amounts and overdrafts."""

    def __init__(self, balance=__K1__):
        if balance < 0:
            raise ValueError("opening balance cannot be negative")
        self.balance = balance

    def deposit(self, amount):
        if amount <= 0:
            raise ValueError("deposit must be positive")
        self.balance += amount
        return self.balance

    def withdraw(self, amount):
        if amount <= 0:
            raise ValueError("withdrawal must be positive")
        if amount > self.balance:
            raise RuntimeError("insufficient funds")
        self.balance -= amount
        return self.balance
''',
        cases=("obj = __FN__(50); obj.deposit(25)", "obj = __FN__(50); obj.withdraw(20)", "obj = __FN__(); obj.deposit(10); obj.balance"),
        edges=("__FN__(-1)", "obj = __FN__(10); obj.withdraw(11)", "obj = __FN__(); obj.deposit(0)", "obj = __FN__(10); obj.withdraw(10)", "obj = __FN__(); obj.withdraw(-5)"),
    ),
)

FUNCTION_TEMPLATES = tuple(t for t in TEMPLATES if not t.is_class)


@dataclass(frozen=True)
class Focal:
    """One concrete focal function/class: template + drawn names and constants."""

    template: Template
    name: str
    source: str  # starts with the def/class line, no leading newline
    cases: tuple[str, ...]  # concrete case scripts, placeholders resolved
    edges: tuple[str, ...]


def instantiate(template: Template, spec_rng: random.Random, style_rng: random.Random) -> Focal:
    """Constants come from `spec_rng` (what the code does), names from `style_rng` (how it is spelt)."""
    subs = dict(template.consts(spec_rng))
    subs["__FN__"] = style_rng.choice(template.fn_names)
    for placeholder, options in template.params.items():
        subs[placeholder] = style_rng.choice(options)

    def fill(text: str) -> str:
        # Longest placeholders first so no placeholder eats part of another.
        for key in sorted(subs, key=len, reverse=True):
            text = _splice(text, key, subs[key])
        return text

    cases = tuple(_function_case(fill(c), subs["__FN__"], template.is_class) for c in template.cases)
    edges = tuple(_function_case(fill(c), subs["__FN__"], template.is_class) for c in template.edges)
    return Focal(template, subs["__FN__"], fill(template.source).strip("\n") + "\n", cases, edges)


def _splice(text: str, key: str, value: str) -> str:
    """Replace `key`; a string constant inside a literal ('SAVE__K1__') goes in without its quotes."""
    quoted = key.startswith("__K") and value[:1] in ("'", '"')
    out, pos = [], 0
    while (i := text.find(key, pos)) >= 0:
        line_start = text.rfind("\n", 0, i) + 1
        before = text[line_start:i]
        inside = before.count('"') % 2 == 1 or before.count("'") % 2 == 1
        out.append(text[pos:i])
        out.append(value[1:-1] if quoted and inside else value)
        pos = i + len(key)
    out.append(text[pos:])
    return "".join(out)


def _function_case(case: str, name: str, is_class: bool) -> str:
    return case if is_class else f"{name}({case})"
