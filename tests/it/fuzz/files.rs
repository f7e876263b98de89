//! Fuzz targets: workflow files (`workflow::parse`, then the validator on what parses, and
//! the next run of a schedule that validates) and segment files (`parse_segments`).

use std::path::Path;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use trellis::engine::time::{next_cron, parse_cron};
use trellis::workflow::validate::validate;
use trellis::workflow::{Problem, Trigger, parse, parse_segments};

use super::mutate::{corpus, mutate, raw};
use super::{Rng, run};
use crate::helpers::{root, templates};

/// YAML syntax and workflow pieces a mutation may insert, many at a line's start.
const YAML_TOKENS: &[&str] = &[
    "&a ",
    "*a",
    "<<: *a\n",
    "? ",
    "- ",
    ": ",
    "{",
    "}",
    "[",
    "]",
    "|\n",
    ">-\n",
    "!!binary ",
    "!!str ",
    "!include x.yaml ",
    "!<tag:yaml.org,2002:map> ",
    "%YAML 1.2\n---\n",
    "---\n",
    "...\n",
    "# comment\n",
    "    ",
    "\t",
    "~",
    "0o777",
    "0x_1F",
    ".nan",
    "duration: 99999999999999999999d\n",
    "duration: 9223372036854775807s\n",
    "duration: -9223372036854775808s\n",
    "duration: 1w1d1h1m1s1w\n",
    "timeout: 0s\n",
    "until: \"25:61\"\n",
    "weekdays: [mon, mon, funday]\n",
    "offset_days: -9223372036854775808\n",
    "offset_days: 4294967296\n",
    "weight: 4294967296\n",
    "holdout: 4294967295\n",
    "cron: \"99999999999999999999 * * * *\"\n",
    "cron: \"*/0 * * * *\"\n",
    "cron: \"0 0 30 2 *\"\n",
    "cron: \"0 0 31 4 MON#5\"\n",
    "cron: \"0-59/1 0-23 1-31 1-12 0-7\"\n",
    "cron: \"0 0 L W *\"\n",
    "timezone: \"../../../etc/localtime\"\n",
    "timezone: customer\n",
    "at_least: 1e308\n",
    "within: 36500d\n",
    "url: \"https://x.invalid/{{customer.id\"\n",
    "url: \"https://x.invalid/{{#*inline \\\"a\\\"}}{{> a}}{{/inline}}{{> a}}\"\n",
    "body: { a: \"{{{{raw}}}}\" }\n",
    "next: next\n",
    "next: \"\"\n",
    "  loop:\n    wait:\n      duration: 0s\n      next: loop\n",
    "  x:\n    split:\n      arms:\n        - { name: a, weight: 4294967295, next: x }\n        - { name: b, weight: 4294967295, next: x }\n",
];

/// Openers and closers for deep nesting, in flow and block style.
const YAML_NESTING: &[(&str, &str)] = &[
    ("[", "]"),
    ("{a: ", "}"),
    ("- ", ""),
    ("not: ", ""),
    ("{not: ", "}"),
    ("{all: [", "]}"),
];

/// A billion-laughs document: each anchor an array of `fan` aliases to the one before, so
/// expanding the last would make `fan^levels` values. Placed where any YAML is taken (a
/// webhook body, an update's `set`), or as a description, or as a whole document.
fn laughs(rng: &mut Rng) -> String {
    let levels = 2 + rng.below(10);
    let fan = 2 + rng.below(15);
    let mut anchors = vec!["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]".to_owned()];
    for level in 1..levels {
        let aliases = vec![format!("*l{}", level - 1); fan].join(", ");
        anchors.push(format!("l{level}: &l{level} [{aliases}]"));
    }
    let last = levels - 1;
    let at = |indent: usize| -> String {
        anchors
            .iter()
            .map(|a| format!("{}{a}\n", " ".repeat(indent)))
            .collect()
    };
    let head = "id: laughs\nname: L\ntrigger: { event: { name: s } }\nstart: a\nnodes:\n  a:\n";
    match rng.below(4) {
        0 => format!(
            "{head}    webhook:\n      url: https://x.invalid/\n      body:\n{}      next: done\n  done: exit\n",
            at(8)
        ),
        1 => format!(
            "{head}    update:\n      set:\n{}        all: *l{last}\n      next: done\n  done: exit\n",
            at(8)
        ),
        2 => format!("x:\n{}description: *l{last}\nid: laughs\n", at(2)),
        _ => format!(
            "segments:\n  s:\n    when:\n      attribute:\n        name: x\n        eq:\n{}",
            at(10)
        ),
    }
}

/// A parsed workflow's problems must each say what is wrong.
fn clear(problems: &[Problem]) {
    assert!(!problems.is_empty(), "an error without a problem");
    for p in problems {
        assert!(
            !p.message.trim().is_empty(),
            "a problem without a message: {p:?}"
        );
    }
}

/// Values a [`substitute`] puts in place of a seed's: huge and odd numbers, durations, cron
/// expressions, times, zones, YAML oddities, hostile text and templates.
const YAML_VALUES: &[&str] = &[
    "99999999999999999999d",
    "9223372036854775807s",
    "-9223372036854775808s",
    "106751991167300d",
    "5200w",
    "0s",
    "-1s",
    "1h-30m",
    "1.5d",
    "1e9w",
    "\"0 0 30 2 *\"",
    "\"*/0 * * * *\"",
    "\"99999999999999999999 * * * *\"",
    "\"0 0 31 4 MON#5\"",
    "\"* * * * * *\"",
    "\"@yearly\"",
    "\"0 0 L W *\"",
    "\"59 23 31 12 7\"",
    "\"0-4294967296 * * * *\"",
    "Mars/Olympus",
    "\"../../../etc/passwd\"",
    "customer",
    "\"25:61\"",
    "\"24:00\"",
    "\"-00:01\"",
    "4294967296",
    "-1",
    "18446744073709551616",
    "1e308",
    "-0",
    ".nan",
    "~",
    "\"\"",
    "\"\\0\"",
    "\"\\u202e\"",
    "\"\\ud800\"",
    "[]",
    "{}",
    "[[[[[[[[]]]]]]]]",
    "*a",
    "&a x",
    "!!binary AAAA",
    "\"{{#*inline \\\"a\\\"}}{{> a}}{{/inline}}{{> a}}\"",
    "\"{{#if}}\"",
    "\"https://x.invalid/{{customer.id}}{{{{raw}}}}\"",
];

/// A seed with one to three `key: value` lines given a hostile value: structure kept, so
/// the value reaches its type's parser and the validator.
fn substitute(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(seed);
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let keyed: Vec<(usize, usize)> = lines
        .iter()
        .enumerate()
        .filter_map(|(i, line)| line.find(": ").map(|at| (i, at + 2)))
        .collect();
    if keyed.is_empty() {
        return seed.to_vec();
    }
    for _ in 0..1 + rng.below(3) {
        let (i, at) = *rng.pick(&keyed);
        let value = if rng.one_in(20) {
            "x".repeat(rng.size(60_000))
        } else {
            (*rng.pick(YAML_VALUES)).to_owned()
        };
        lines[i] = format!("{}{value}", &lines[i][..at]);
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out.into_bytes()
}

/// A workflow of many nodes that do not wait, each with edges to random others: long chains
/// and cycles for the validator's graph checks.
fn graph(rng: &mut Rng) -> Vec<u8> {
    let n = rng.size(1_200);
    let mut text =
        String::from("id: graph\nname: G\ntrigger: { event: { name: s } }\nstart: n0\nnodes:\n");
    let next = |rng: &mut Rng, i: usize| {
        if rng.one_in(4) {
            format!("n{}", rng.below(n))
        } else {
            format!("n{}", (i + 1) % (n + 1))
        }
    };
    for i in 0..n {
        let line = match rng.below(3) {
            0 => format!(
                "  n{i}: {{ branch: {{ cases: [{{ when: {{ has_tag: x }}, next: {} }}], else: {} }} }}\n",
                next(rng, i),
                next(rng, i)
            ),
            1 if rng.one_in(8) => format!(
                "  n{i}: {{ wait: {{ duration: 1d, next: {} }} }}\n",
                next(rng, i)
            ),
            _ => format!(
                "  n{i}: {{ update: {{ add_tags: [x], next: {} }} }}\n",
                next(rng, i)
            ),
        };
        text.push_str(&line);
    }
    text.push_str(&format!("  n{n}: exit\n"));
    text.into_bytes()
}

/// Generates from `seeds`: mutations mostly, hostile values in place, sometimes raw bytes, a
/// billion laughs, or a large graph.
fn generator(seeds: Vec<Vec<u8>>) -> impl FnMut(&mut Rng) -> Vec<u8> {
    move |rng| match rng.below(64) {
        0..=3 => raw(rng, 1024),
        4 => laughs(rng).into_bytes(),
        22 => graph(rng),
        6..=21 => {
            let seed = rng.pick(&seeds).clone();
            substitute(rng, &seed)
        }
        5 => {
            let seed = rng.pick(&seeds).clone();
            let other = laughs(rng).into_bytes();
            mutate(rng, &seed, &other, YAML_TOKENS, YAML_NESTING)
        }
        _ => {
            let seed = rng.pick(&seeds);
            let other = rng.pick(&seeds);
            mutate(rng, seed, other, YAML_TOKENS, YAML_NESTING)
        }
    }
}

#[test]
fn workflow_files_are_refused_clearly_or_validated() {
    let mut seeds = Vec::new();
    corpus(&root().join("workflows"), &["yaml"], &mut seeds);
    corpus(&root().join("tests/fixtures"), &["yaml"], &mut seeds);
    assert!(seeds.len() > 10, "the example workflows are the seeds");
    let templates = templates();
    let after: Timestamp = "2026-03-02T15:00:00Z".parse().expect("a timestamp");
    let file = Path::new("fuzz.yaml");
    run("workflows", generator(seeds), |input| {
        let text = String::from_utf8_lossy(input);
        match parse(file, &text) {
            Err(problems) => clear(&problems),
            Ok(workflow) => {
                let problems = validate(&workflow, &templates);
                for p in &problems {
                    assert!(!p.message.trim().is_empty(), "{p:?}");
                }
                // A valid schedule's next run, as the scheduler will compute it.
                if problems.is_empty()
                    && let Trigger::Schedule(s) = &workflow.trigger.value
                    && let Ok(cron) = parse_cron(&s.cron)
                {
                    let _ = next_cron(&cron, &TimeZone::UTC, after);
                }
            }
        }
    });
}

#[test]
fn segment_files_are_refused_clearly_or_checked() {
    let mut seeds = Vec::new();
    corpus(&root().join("workflows"), &["yaml"], &mut seeds);
    corpus(
        &root().join("tests/fixtures/broken/workflows"),
        &["yaml"],
        &mut seeds,
    );
    // Segment files first: most mutations start from one.
    seeds.sort_by_key(|s| !String::from_utf8_lossy(s).contains("segments:"));
    let segment_seeds = seeds
        .iter()
        .take_while(|s| String::from_utf8_lossy(s).contains("segments:"))
        .count();
    assert!(segment_seeds >= 2, "the example segments are the seeds");
    let file = Path::new("segments.yaml");
    let mut all = generator(seeds.clone());
    let mut own = generator(seeds[..segment_seeds].to_vec());
    run(
        "segments",
        move |rng| {
            if rng.one_in(4) { all(rng) } else { own(rng) }
        },
        |input| {
            let text = String::from_utf8_lossy(input);
            let (defs, problems) = parse_segments(file, &text);
            for p in &problems {
                assert!(!p.message.trim().is_empty(), "{p:?}");
            }
            for def in &defs {
                assert!(def.line > 0, "segment {} has no line", def.id);
            }
        },
    );
}
