//! Static checks of template files: compile errors with their line, variables the render
//! context can never provide, unknown or dynamic partials, partial cycles and inline
//! partials (handlebars would overflow the stack on a cycle at render time), unescaped
//! output in HTML, and sources too large or too deeply nested to compile in bounded time.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use handlebars::template::{HelperTemplate, Parameter, Template, TemplateElement};
use handlebars::{Path as HbPath, TemplateError};

use super::context::ROOTS;
use crate::workflow::Problem;

/// Helpers a bare `{{name}}` may call: handlebars' own and ours.
const HELPERS: &[&str] = &[
    "if", "unless", "each", "with", "lookup", "raw", "log", "len", "eq", "ne", "gt", "gte", "lt",
    "lte", "and", "or", "not", "date", "money", "default",
];

/// The largest template source: above any email (Gmail clips a message over 102 kB), and a
/// bound on compile time.
pub const MAX_TEMPLATE_BYTES: usize = 128 * 1024;
/// The deepest nesting of blocks, or of subexpressions within one expression: handlebars
/// compiles, checks and renders them by recursion.
pub const MAX_NESTING: usize = 32;
/// handlebars locates each expression by counting from the start of the source, so
/// compiling takes time in expressions × size; this bounds the sum of their offsets.
const MAX_LOCATING: usize = 3_000_000;

/// Refuses a source that could not be compiled and rendered in bounded time and stack: too
/// large, nested too deep, or too many expressions for its size. A cheap scan, before any
/// parsing; its count of nesting is approximate but never lower than handlebars' own.
pub(super) fn bounded(text: &str) -> Result<(), String> {
    if text.len() > MAX_TEMPLATE_BYTES {
        return Err(format!(
            "template is larger than {} KiB",
            MAX_TEMPLATE_BYTES / 1024
        ));
    }
    let bytes = text.as_bytes();
    let (mut blocks, mut parens, mut locating, mut expressions) = (0usize, 0usize, 0usize, 0);
    let mut inside = false;
    let mut i = 0;
    while i < bytes.len() {
        if !inside && bytes[i..].starts_with(b"{{") {
            inside = true;
            expressions += 1;
            locating += i;
            i += 2;
            while bytes
                .get(i)
                .is_some_and(|b| matches!(b, b'{' | b'~' | b' '))
            {
                i += 1;
            }
            if bytes[i..].starts_with(b"!--") {
                // handlebars reads an unclosed `{{!--` as a short comment, but only after
                // looking for its `--}}` to the end: once per comment, quadratic in all.
                let closed = ["--}}", "--~}}"]
                    .iter()
                    .filter_map(|close| text[i + 3..].find(close).map(|at| at + close.len()))
                    .min();
                let Some(length) = closed else {
                    return Err("a comment opened with {{!-- is not closed with --}}".into());
                };
                i += 3 + length;
                inside = false;
                continue;
            }
            match bytes.get(i) {
                Some(b'#') => blocks += 1,
                Some(b'/') => blocks = blocks.saturating_sub(1),
                _ => {}
            }
            if blocks > MAX_NESTING {
                return Err(format!(
                    "blocks are nested deeper than {MAX_NESTING} levels"
                ));
            }
            continue;
        }
        if inside {
            match bytes[i] {
                b'(' => parens += 1,
                b')' => parens = parens.saturating_sub(1),
                b'}' if bytes[i..].starts_with(b"}}") => {
                    inside = false;
                    parens = 0;
                }
                _ => {}
            }
            if parens > MAX_NESTING {
                return Err(format!(
                    "subexpressions are nested deeper than {MAX_NESTING} levels"
                ));
            }
        }
        i += 1;
    }
    if locating > MAX_LOCATING {
        return Err(format!(
            "template has too many expressions for its size ({expressions} in {} KiB): move some of it into partials",
            text.len().div_ceil(1024)
        ));
    }
    Ok(())
}

/// Checks a template string written inline, such as a webhook's URL, header or body: it
/// must be bounded, compile, and use no partials or decorators (an inline partial that
/// includes itself would overflow the stack at render time).
///
/// # Errors
/// What is wrong, as a sentence fragment.
pub fn check_inline(text: &str) -> Result<(), String> {
    bounded(text).map_err(|message| format!("is not a valid template: {message}"))?;
    let template = Template::compile(text)
        .map_err(|err| format!("is not a valid template: {}", err.reason()))?;
    let mut found = None;
    visit(&template, &mut |element, _| {
        if found.is_none()
            && matches!(
                element,
                TemplateElement::PartialExpression(_)
                    | TemplateElement::PartialBlock(_)
                    | TemplateElement::DecoratorExpression(_)
                    | TemplateElement::DecoratorBlock(_)
            )
        {
            found = Some("cannot use partials ({{> name}}) or decorators ({{*inline}}) inline");
        }
    });
    found.map_or(Ok(()), |message| Err(message.to_owned()))
}

/// Calls `f` on every element of `template` and of the blocks nested in it, with its line.
fn visit(template: &Template, f: &mut impl FnMut(&TemplateElement, u32)) {
    for (i, element) in template.elements.iter().enumerate() {
        f(element, line_of(template, i));
        let inner: Vec<&Template> = match element {
            TemplateElement::HelperBlock(h) => h.template.iter().chain(h.inverse.iter()).collect(),
            TemplateElement::DecoratorBlock(d) | TemplateElement::PartialBlock(d) => {
                d.template.iter().collect()
            }
            _ => Vec::new(),
        };
        for template in inner {
            visit(template, f);
        }
    }
}

/// A template error as a located problem.
pub(super) fn compile_problem(file: &Path, err: &TemplateError) -> Problem {
    let line = err
        .pos()
        .map_or(0, |(line, _)| u32::try_from(line).unwrap_or(u32::MAX));
    let reason = err.reason().to_string();
    // Handlebars lists every token it expected; the line says enough.
    let reason = match reason.split_once(": expected") {
        Some((head, _)) => format!("{head} (an unclosed block or a stray brace?)"),
        None => reason,
    };
    Problem::at(file, line, format!("template does not compile: {reason}"))
}

/// The partials a template refers to by name, with the line of each reference.
fn partial_refs(template: &Template, out: &mut Vec<(Option<String>, u32)>) {
    for (i, element) in template.elements.iter().enumerate() {
        let line = line_of(template, i);
        match element {
            TemplateElement::PartialExpression(d) | TemplateElement::PartialBlock(d) => {
                let name = match &d.name {
                    Parameter::Name(n) => Some(n.clone()),
                    Parameter::Path(p) => Some(raw_path(p).to_owned()),
                    _ => None,
                };
                out.push((name, line));
                if let Some(inner) = &d.template {
                    partial_refs(inner, out);
                }
            }
            TemplateElement::HelperBlock(h) => {
                for inner in h.template.iter().chain(h.inverse.iter()) {
                    partial_refs(inner, out);
                }
            }
            TemplateElement::DecoratorBlock(d) => {
                if let Some(inner) = &d.template {
                    partial_refs(inner, out);
                }
            }
            _ => {}
        }
    }
}

fn line_of(template: &Template, index: usize) -> u32 {
    template
        .mapping
        .get(index)
        .map_or(0, |m| u32::try_from(m.0).unwrap_or(u32::MAX))
}

fn raw_path(path: &HbPath) -> &str {
    match path {
        HbPath::Relative((_, raw)) => raw,
        HbPath::Local((_, _, raw)) => raw,
    }
}

/// Finds cycles among partials; reports each once, and returns the partials on a cycle so
/// they are never registered.
pub(super) fn partial_cycles(
    partials: &BTreeMap<String, (PathBuf, String)>,
    problems: &mut Vec<Problem>,
) -> BTreeSet<String> {
    let mut edges: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (name, (_, text)) in partials {
        let mut refs = Vec::new();
        if bounded(text).is_ok()
            && let Ok(template) = Template::compile(text)
        {
            partial_refs(&template, &mut refs);
        }
        edges.insert(
            name,
            refs.into_iter()
                .filter_map(|(r, _)| r)
                .filter(|r| partials.contains_key(r))
                .collect(),
        );
    }
    let mut cyclic = BTreeSet::new();
    for start in edges.keys() {
        // Depth-first search for a path from `start` back to itself.
        let mut stack: Vec<(String, Vec<String>)> =
            vec![(start.to_string(), vec![start.to_string()])];
        let mut seen = BTreeSet::new();
        while let Some((node, path)) = stack.pop() {
            for next in edges.get(node.as_str()).into_iter().flatten() {
                if next == start {
                    if cyclic.insert(start.to_string()) {
                        let file = &partials[*start].0;
                        let mut cycle = path.clone();
                        cycle.push(next.clone());
                        problems.push(Problem::at(
                            file,
                            0,
                            format!(
                                "partials include each other in a cycle: {}",
                                cycle.join(" -> ")
                            ),
                        ));
                    }
                } else if seen.insert(next.clone()) {
                    let mut longer = path.clone();
                    longer.push(next.clone());
                    stack.push((next.clone(), longer));
                }
            }
        }
    }
    cyclic
}

/// Checks one template file's variables and partial references. `html` is set for files
/// whose output can reach an HTML part (`html.hbs` and partials): there, triple-stash
/// `{{{ }}}` and `{{& }}` are refused, since customer data would become markup.
pub(super) fn scan(
    file: &Path,
    text: &str,
    html: bool,
    partials: &BTreeSet<String>,
    problems: &mut Vec<Problem>,
) {
    if bounded(text).is_err() {
        return; // Already reported, and not to be compiled.
    }
    let Ok(template) = Template::compile(text) else {
        return; // Already reported as a compile problem.
    };
    scan_compiled(file, &template, html, partials, problems);
}

/// [`scan`] of a template already compiled.
pub(super) fn scan_compiled(
    file: &Path,
    template: &Template,
    html: bool,
    partials: &BTreeSet<String>,
    problems: &mut Vec<Problem>,
) {
    visit(template, &mut |element, line| {
        if let TemplateElement::DecoratorExpression(_) | TemplateElement::DecoratorBlock(_) =
            element
        {
            problems.push(Problem::at(
                file,
                line,
                "inline partials and decorators ({{#*inline}}) are not supported: put partials in templates/partials/",
            ));
        }
    });
    let mut refs = Vec::new();
    partial_refs(template, &mut refs);
    for (name, line) in refs {
        match name {
            Some(name) if name == "@partial-block" || partials.contains(&name) => {}
            Some(name) => problems.push(Problem::at(
                file,
                line,
                format!("partial {name:?} not found in templates/partials/"),
            )),
            None => problems.push(Problem::at(
                file,
                line,
                "partial names must be written out; dynamic partials are not allowed",
            )),
        }
    }
    walk(template, file, problems);
    if html {
        unescaped(template, file, problems);
    }
}

/// Reports every triple-stash in a template, nested blocks included.
fn unescaped(template: &Template, file: &Path, problems: &mut Vec<Problem>) {
    for (i, element) in template.elements.iter().enumerate() {
        match element {
            TemplateElement::HtmlExpression(h) => {
                let name = match &h.name {
                    Parameter::Name(n) => n.clone(),
                    Parameter::Path(p) => raw_path(p).to_owned(),
                    _ => "...".to_owned(),
                };
                let args = if h.params.is_empty() && h.hash.is_empty() {
                    ""
                } else {
                    " ..."
                };
                problems.push(Problem::at(
                    file,
                    line_of(template, i),
                    format!(
                        "{{{{{{{name}{args}}}}}}} is not escaped: write {{{{{name}{args}}}}} \
                         (HTML output must escape every value)"
                    ),
                ));
            }
            TemplateElement::HelperBlock(h) => {
                for inner in h.template.iter().chain(h.inverse.iter()) {
                    unescaped(inner, file, problems);
                }
            }
            TemplateElement::PartialBlock(d) | TemplateElement::DecoratorBlock(d) => {
                if let Some(inner) = &d.template {
                    unescaped(inner, file, problems);
                }
            }
            _ => {}
        }
    }
}

fn walk(template: &Template, file: &Path, problems: &mut Vec<Problem>) {
    for (i, element) in template.elements.iter().enumerate() {
        let line = line_of(template, i);
        match element {
            TemplateElement::Expression(h) | TemplateElement::HtmlExpression(h) => {
                check_helper(h, line, file, problems);
            }
            TemplateElement::HelperBlock(h) => {
                check_helper(h, line, file, problems);
                let name = match &h.name {
                    Parameter::Name(n) => n.as_str(),
                    _ => "",
                };
                // Inside `each` and `with` (or a block with block parameters) paths are
                // relative to the item, which cannot be checked without data.
                let rebinds = matches!(name, "each" | "with") || h.block_param.is_some();
                if let Some(inner) = &h.template
                    && !rebinds
                {
                    walk(inner, file, problems);
                }
                if let Some(inverse) = &h.inverse {
                    walk(inverse, file, problems);
                }
            }
            TemplateElement::PartialBlock(d) | TemplateElement::DecoratorBlock(d) => {
                if let Some(inner) = &d.template {
                    walk(inner, file, problems);
                }
            }
            _ => {}
        }
    }
}

fn check_helper(h: &HelperTemplate, line: u32, file: &Path, problems: &mut Vec<Problem>) {
    match &h.name {
        Parameter::Path(p) => check_path(raw_path(p), line, file, problems),
        Parameter::Name(n) if h.params.is_empty() && !HELPERS.contains(&n.as_str()) => {
            check_path(n, line, file, problems);
        }
        _ => {}
    }
    for param in h.params.iter().chain(h.hash.values()) {
        if let Parameter::Path(p) = param {
            check_path(raw_path(p), line, file, problems);
        }
    }
}

fn check_path(raw: &str, line: u32, file: &Path, problems: &mut Vec<Problem>) {
    if raw.starts_with('@') || raw.starts_with('.') || raw == "this" || raw.starts_with("this.") {
        return;
    }
    let mut segments = raw.split(['.', '/']);
    let root = segments.next().unwrap_or_default();
    let roots: Vec<&str> = ROOTS.iter().map(|(r, _)| *r).collect();
    let Some((_, fields)) = ROOTS.iter().find(|(r, _)| *r == root) else {
        problems.push(Problem::at(
            file,
            line,
            format!(
                "variable {raw:?} can never be provided: the context has only {}",
                roots.join(", ")
            ),
        ));
        return;
    };
    if let Some(field) = segments.next()
        && !fields.contains(&field)
    {
        let hint = if root == "customer" {
            "; free attributes are under customer.attributes"
        } else if root == "event" {
            "; event data is under event.properties"
        } else {
            ""
        };
        problems.push(Problem::at(
            file,
            line,
            format!(
                "variable {raw:?} can never be provided: {root} has only {}{hint}",
                fields.join(", ")
            ),
        ));
    }
}
