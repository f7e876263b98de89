//! Mutations of seed inputs: byte flips, truncations, deletions, duplications, splices of two
//! seeds, dictionary tokens, long runs, deep nesting, and raw bytes.

use std::path::Path;

use super::Rng;

/// Tokens every text format should survive: NUL, control and odd Unicode, huge and odd
/// numbers, quotes and escapes.
pub const HOSTILE: &[&str] = &[
    "\0",
    "\u{1}",
    "\u{7f}",
    "\u{feff}",
    "\u{202e}",
    "\u{fffd}",
    "\u{10ffff}",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "👩‍👩‍👧‍👦",
    "é",
    "\r\n",
    "\r",
    "\t",
    "\\",
    "\\u0000",
    "\\ud800",
    "\"",
    "'",
    "99999999999999999999999999999999",
    "-9223372036854775809",
    "18446744073709551616",
    "1e308",
    "1e999",
    "-0",
    "0x7fffffff",
    "NaN",
    "inf",
    "-.inf",
    "null",
    "true",
    "9999-12-31T23:59:59Z",
    "-9999-01-01T00:00:00Z",
    "+99999-01-01T00:00:00Z",
    "2026-02-30T25:61:61Z",
    "2026-03-02T15:00:00+99:99",
    "%n%n%n%s",
    "{}",
    "[]",
];

/// The largest input a mutation makes: 2 MiB, twice the API's body limit.
const MAX_INPUT: usize = 2 << 20;

/// Every file under `dir` (recursively) whose name ends in one of `extensions`, as bytes.
pub fn corpus(dir: &Path, extensions: &[&str], out: &mut Vec<Vec<u8>>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            corpus(&path, extensions, out);
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| extensions.contains(&e))
            && let Ok(bytes) = std::fs::read(&path)
        {
            out.push(bytes);
        }
    }
}

/// Random bytes, mostly printable ASCII (which reaches deeper into text parsers), up to `max`.
pub fn raw(rng: &mut Rng, max: usize) -> Vec<u8> {
    let len = rng.size(max);
    let printable = !rng.one_in(3);
    (0..len)
        .map(|_| {
            let b = rng.next() as u8;
            if printable { 0x20 + b % 0x5f } else { b }
        })
        .collect()
}

/// A byte offset in `input`, on any byte (mutations may split UTF-8 on purpose).
fn at(rng: &mut Rng, input: &[u8]) -> usize {
    rng.below(input.len() + 1)
}

/// A byte offset at the start of a line, for line-based formats.
fn line_start(rng: &mut Rng, input: &[u8]) -> usize {
    let at = at(rng, input);
    input[..at]
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1)
}

/// Applies one to four mutations to a copy of a seed: a byte changed or its bit flipped, a
/// range deleted, duplicated or truncated, a splice with `other`, a `dictionary` or
/// [`HOSTILE`] token inserted, a long run, or `nesting` repeated to a great depth.
pub fn mutate(
    rng: &mut Rng,
    seed: &[u8],
    other: &[u8],
    dictionary: &[&str],
    nesting: &[(&str, &str)],
) -> Vec<u8> {
    let mut input = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = input.len();
        match rng.below(12) {
            0 => {
                if len > 0 {
                    let i = rng.below(len);
                    input[i] ^= 1 << rng.below(8);
                }
            }
            1 => {
                if len > 0 {
                    let i = rng.below(len);
                    input[i] = *rng.pick(b"\0\xff\n\"{}[]:-&*#\\\t |>!%@'(),.~0");
                }
            }
            2 => input.truncate(at(rng, &input)),
            3 => {
                let start = at(rng, &input);
                let end = (start + rng.size(64)).min(len);
                input.drain(start..end);
            }
            4 => {
                let start = at(rng, &input);
                let end = (start + rng.size(256)).min(len);
                let chunk = input[start..end].to_vec();
                let to = at(rng, &input);
                let times = if rng.one_in(8) { rng.size(64) } else { 1 };
                input.splice(to..to, chunk.repeat(times));
            }
            5 => {
                // A splice: this seed's head with another's tail.
                let cut = at(rng, &input);
                let from = rng.below(other.len() + 1);
                input.truncate(cut);
                input.extend_from_slice(&other[from..]);
            }
            6 | 7 => {
                let token = if rng.one_in(2) && !dictionary.is_empty() {
                    *rng.pick(dictionary)
                } else {
                    *rng.pick(HOSTILE)
                };
                let to = if rng.one_in(2) {
                    line_start(rng, &input)
                } else {
                    at(rng, &input)
                };
                input.splice(to..to, token.bytes());
            }
            8 => {
                // A very long run: a long line, a long key, a long number.
                let byte = *rng.pick(b"a9 \"-#[{");
                let to = at(rng, &input);
                let run = rng.size(100_000);
                input.splice(to..to, std::iter::repeat_n(byte, run));
            }
            9 => {
                if !nesting.is_empty() {
                    let (open, close) = *rng.pick(nesting);
                    let depth = rng.size(5_000);
                    let to = at(rng, &input);
                    let mut deep = open.repeat(depth);
                    if !rng.one_in(4) {
                        deep.push_str(&close.repeat(depth));
                    }
                    input.splice(to..to, deep.bytes());
                }
            }
            10 => {
                // A line of the seed repeated: many nodes, many rows.
                let start = line_start(rng, &input);
                let end = input[start..]
                    .iter()
                    .position(|b| *b == b'\n')
                    .map_or(len, |p| start + p + 1);
                let line = &input[start..end];
                let times = rng.size(2_000).min(MAX_INPUT / line.len().max(1));
                let lines = line.repeat(times);
                input.splice(end..end, lines);
            }
            _ => {
                let to = at(rng, &input);
                let noise = raw(rng, 16);
                input.splice(to..to, noise);
            }
        }
        input.truncate(MAX_INPUT);
    }
    input
}
