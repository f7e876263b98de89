//! A YAML document's outline: the entries of its top-level mapping, and of the mappings
//! nested directly in it, each with its line and the byte ranges of its key and value.
//!
//! The loader uses it to recover after a format error: each part is cut out of the text
//! with [`Excerpts`] and deserialised on its own, so one bad node does not hide another.

use std::ops::Range;

use serde_saphyr::granit_parser::{Event, Marker, Parser, Span, StructureStyle};

/// One `key: value` entry of a mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    /// The key as written (scalar keys only; other keys are skipped).
    pub key: String,
    /// The key's 1-based line.
    pub line: u32,
    /// The byte range of the key.
    pub key_span: Range<usize>,
    /// The byte range of the value.
    pub value_span: Range<usize>,
    /// The line of the value's last character.
    pub last_line: u32,
    /// The value's own entries, when the value is a mapping (one level down only).
    pub entries: Option<Vec<Entry>>,
}

/// A node of the YAML tree, as far as the outline needs it.
struct Tree {
    start: Marker,
    end: Marker,
    /// `(key, value)` pairs when the node is a mapping.
    pairs: Option<Vec<(Tree, Tree)>>,
    /// The text of a scalar.
    scalar: Option<String>,
    /// Whether an alias occurs in the node.
    aliases: bool,
}

/// The outline of a document's top-level mapping, two levels deep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Outline {
    /// The top-level entries.
    pub entries: Vec<Entry>,
    /// Whether the document uses an alias (`*name`, `<<: *name`): parts that refer to each
    /// other cannot be read apart.
    pub aliases: bool,
}

/// The outline of `text`; `None` when the text is not valid YAML or its root is not a
/// mapping.
pub(super) fn outline(text: &str) -> Option<Outline> {
    let offsets = ByteOffsets::new(text);
    let mut events = Parser::new_from_str(text);
    let root = loop {
        let (event, span) = events.next()?.ok()?;
        match event {
            Event::StreamStart | Event::DocumentStart(..) => {}
            Event::StreamEnd => return None,
            other => break tree(other, span, &mut events, 0)?,
        }
    };
    let pairs = root.pairs?;
    Some(Outline {
        entries: entries(pairs, 2, &offsets),
        aliases: root.aliases,
    })
}

fn entries(pairs: Vec<(Tree, Tree)>, depth: u8, offsets: &ByteOffsets) -> Vec<Entry> {
    pairs
        .into_iter()
        .filter_map(|(key, value)| {
            let name = key.scalar?;
            Some(Entry {
                key: name,
                line: line(&key.start),
                key_span: offsets.of(&key.start)..offsets.of(&key.end),
                value_span: offsets.of(&value.start)..offsets.of(&value.end),
                last_line: line(&value.end),
                entries: match value.pairs {
                    Some(pairs) if depth > 1 => Some(entries(pairs, depth - 1, offsets)),
                    _ => None,
                },
            })
        })
        .collect()
}

fn line(marker: &Marker) -> u32 {
    u32::try_from(marker.line()).unwrap_or(u32::MAX)
}

type Events<'a> = Parser<'a, serde_saphyr::granit_parser::StrInput<'a>>;

/// How deep the outline keeps the tree: the root, its values, and the nodes' values. Below,
/// nodes are read flat by [`skip`], so deep nesting cannot overflow the stack.
const TREE_DEPTH: usize = 3;

/// Reads the node that `first` starts, `depth` levels below the root, consuming its events.
fn tree(first: Event<'_>, span: Span, events: &mut Events<'_>, depth: usize) -> Option<Tree> {
    if depth >= TREE_DEPTH {
        return skip(first, span, events);
    }
    let depth = depth + 1;
    match first {
        Event::Scalar(value, ..) => Some(Tree {
            start: span.start,
            end: span.end,
            pairs: None,
            scalar: Some(value.into_owned()),
            aliases: false,
        }),
        Event::MappingStart(style, ..) => {
            let mut pairs = Vec::new();
            let mut end = span.end;
            let mut aliases = false;
            loop {
                let (event, span) = next_node(events)?;
                if event == Event::MappingEnd {
                    if style == StructureStyle::Flow {
                        end = span.end;
                    }
                    break;
                }
                let key = tree(event, span, events, depth)?;
                let (event, span) = next_node(events)?;
                let value = tree(event, span, events, depth)?;
                end = value.end;
                aliases |= key.aliases || value.aliases;
                pairs.push((key, value));
            }
            Some(Tree {
                start: span.start,
                end,
                pairs: Some(pairs),
                scalar: None,
                aliases,
            })
        }
        Event::SequenceStart(style, ..) => {
            let mut end = span.end;
            let mut aliases = false;
            loop {
                let (event, span) = next_node(events)?;
                if event == Event::SequenceEnd {
                    if style == StructureStyle::Flow {
                        end = span.end;
                    }
                    break;
                }
                let item = tree(event, span, events, depth)?;
                end = item.end;
                aliases |= item.aliases;
            }
            Some(Tree {
                start: span.start,
                end,
                pairs: None,
                scalar: None,
                aliases,
            })
        }
        // An alias, or an event the outline does not need: a leaf.
        other => Some(Tree {
            start: span.start,
            end: span.end,
            pairs: None,
            scalar: None,
            aliases: matches!(other, Event::Alias(..) | Event::UnresolvedAlias(..)),
        }),
    }
}

/// Reads the node that `first` starts without recursion: its extent and whether it holds an
/// alias, as [`tree`] would find them, but no pairs. A block collection ends where its last
/// node does; a flow collection at its closing bracket.
fn skip(first: Event<'_>, span: Span, events: &mut Events<'_>) -> Option<Tree> {
    let start = span.start;
    let mut end = span.end;
    let mut aliases = matches!(first, Event::Alias(..) | Event::UnresolvedAlias(..));
    let scalar = match &first {
        Event::Scalar(value, ..) => Some(value.to_string()),
        _ => None,
    };
    // The styles of the collections still open.
    let mut open: Vec<StructureStyle> = match first {
        Event::MappingStart(style, ..) | Event::SequenceStart(style, ..) => vec![style],
        _ => Vec::new(),
    };
    while let Some(style) = open.last().copied() {
        let (event, span) = next_node(events)?;
        match event {
            Event::MappingStart(style, ..) | Event::SequenceStart(style, ..) => {
                open.push(style);
                end = span.end;
            }
            Event::MappingEnd | Event::SequenceEnd => {
                open.pop();
                if style == StructureStyle::Flow {
                    end = span.end;
                }
            }
            Event::Alias(..) | Event::UnresolvedAlias(..) => {
                aliases = true;
                end = span.end;
            }
            _ => end = span.end,
        }
    }
    Some(Tree {
        start,
        end,
        pairs: None,
        scalar,
        aliases,
    })
}

/// The next event that is a node or ends a collection, skipping comments and anchors.
fn next_node<'a>(events: &mut Events<'a>) -> Option<(Event<'a>, Span)> {
    loop {
        let (event, span) = events.next()?.ok()?;
        match event {
            Event::Scalar(..)
            | Event::MappingStart(..)
            | Event::MappingEnd
            | Event::SequenceStart(..)
            | Event::SequenceEnd
            | Event::Alias(..)
            | Event::UnresolvedAlias(..) => return Some((event, span)),
            Event::StreamEnd | Event::DocumentEnd | Event::DocumentStart(..) => return None,
            _ => {}
        }
    }
}

/// Byte offsets of character indices, for parsers that report only the latter.
struct ByteOffsets(Vec<usize>);

impl ByteOffsets {
    fn new(text: &str) -> Self {
        Self(
            text.char_indices()
                .map(|(i, _)| i)
                .chain([text.len()])
                .collect(),
        )
    }

    fn of(&self, marker: &Marker) -> usize {
        marker.byte_offset().unwrap_or_else(|| {
            self.0
                .get(marker.index())
                .copied()
                .unwrap_or_else(|| self.0.last().copied().unwrap_or(0))
        })
    }
}

/// Cuts parts out of one text: each is a document of its own whose lines and columns are
/// those of the whole file. The line breaks are indexed once, so cutting every part of a
/// large file stays close to linear.
pub(super) struct Excerpts<'a> {
    text: &'a str,
    /// The byte offset of every line break character (`\n` or `\r`).
    positions: Vec<usize>,
    /// Those characters, in order.
    breaks: String,
}

impl<'a> Excerpts<'a> {
    /// Indexes the line breaks of `text`.
    pub(super) fn new(text: &'a str) -> Self {
        let (positions, breaks) = text
            .char_indices()
            .filter(|(_, c)| *c == '\n' || *c == '\r')
            .unzip();
        Self {
            text,
            positions,
            breaks,
        }
    }

    /// The part in `keep`: the line breaks before it kept, the columns before it on its
    /// first line blanked to spaces, and nothing after it.
    pub(super) fn part(&self, keep: Range<usize>) -> String {
        let end = keep.end.min(self.text.len());
        let start = keep.start.min(end);
        let (Some(before), Some(part)) = (self.text.get(..start), self.text.get(start..end)) else {
            return String::new(); // Spans come from the parser and fall on characters.
        };
        let lines = self.positions.partition_point(|p| *p < start);
        let line_start = lines
            .checked_sub(1)
            .map_or(0, |last| self.positions[last] + 1);
        let mut out = String::with_capacity(lines + part.len() + 80);
        out.push_str(&self.breaks[..lines]);
        out.extend(std::iter::repeat_n(
            ' ',
            before[line_start..].chars().count(),
        ));
        out.push_str(part);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "id: x # the id\nnodes:\n  a:\n    wait:\n      duration: 1d\n      next: b\n  b: { send_sms: { template: t, next: c } }\n  c: exit\nstart: a\n";

    #[test]
    fn entries_have_lines_and_spans_two_levels_deep() {
        let top = outline(TEXT).expect("an outline").entries;
        let keys: Vec<(&str, u32, u32)> = top
            .iter()
            .map(|e| (e.key.as_str(), e.line, e.last_line))
            .collect();
        assert_eq!(keys, [("id", 1, 1), ("nodes", 2, 8), ("start", 9, 9)]);
        assert_eq!(&TEXT[top[0].value_span.clone()], "x");
        let nodes = top[1].entries.as_ref().expect("nodes is a mapping");
        let shown: Vec<(&str, u32, &str)> = nodes
            .iter()
            .map(|e| (e.key.as_str(), e.line, &TEXT[e.value_span.clone()]))
            .collect();
        assert_eq!(
            shown,
            [
                ("a", 3, "wait:\n      duration: 1d\n      next: b"),
                ("b", 7, "{ send_sms: { template: t, next: c } }"),
                ("c", 8, "exit"),
            ]
        );
        assert_eq!(&TEXT[nodes[0].key_span.clone()], "a");
    }

    #[test]
    fn an_excerpt_keeps_lines_and_columns() {
        let top = outline(TEXT).expect("an outline").entries;
        let b = &top[1].entries.as_ref().expect("nodes")[1];
        let doc = Excerpts::new(TEXT).part(b.value_span.clone());
        assert_eq!(doc.lines().count(), 7, "the lines up to the part's own");
        assert_eq!(
            doc.lines().nth(6),
            Some("     { send_sms: { template: t, next: c } }")
        );
        assert!(doc.lines().take(6).all(|l| l.trim().is_empty()));
    }

    #[test]
    fn no_outline_without_a_mapping_at_the_root() {
        assert_eq!(outline("- a\n- b\n"), None);
        assert_eq!(outline("a: { b\n"), None);
        assert_eq!(outline(""), None);
        assert!(outline("a: &x 1\nb: [*x]\n").is_some_and(|o| o.aliases));
        assert!(outline(TEXT).is_some_and(|o| !o.aliases));
    }
}
