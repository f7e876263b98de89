//! Message templates: loaded once from `templates/`, checked, then rendered (pure after loading).
//!
//! An email template is a folder `templates/<name>/` with `subject.hbs`, `html.hbs` and
//! `text.hbs`; an SMS template is `templates/<name>/sms.hbs`; partials (including layouts)
//! live in `templates/partials/<name>.hbs`. Rendering is strict: a missing variable is an
//! error, not an empty string. Only `html.hbs` is HTML-escaped.

mod check;
mod context;
pub mod helpers;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use handlebars::Handlebars;
use serde_json::Value;

pub use check::{MAX_NESTING, MAX_TEMPLATE_BYTES, check_inline};
pub use context::{ROOTS, render_context};

use crate::workflow::Problem;
use crate::workflow::load::escapes;

/// The folder under `templates/` that holds partials.
pub const PARTIALS_DIR: &str = "partials";

/// The files of an email template.
const EMAIL_PARTS: [&str; 3] = ["subject", "html", "text"];

/// Which kinds of message a template folder can render.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Kinds {
    /// Has `subject.hbs`, `html.hbs` and `text.hbs`.
    pub email: bool,
    /// Has `sms.hbs`.
    pub sms: bool,
}

/// A rendered email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedEmail {
    /// The subject line.
    pub subject: String,
    /// The HTML part.
    pub html: String,
    /// The plain-text part.
    pub text: String,
}

/// Why rendering failed.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// No template folder of that name can render that kind of message.
    #[error("no {kind} template named {name:?}")]
    Unknown {
        /// The template name.
        name: String,
        /// `email` or `sms`.
        kind: &'static str,
    },
    /// Handlebars failed, for example on a missing variable in strict mode.
    #[error("rendering {file}{}: {message}{}", at(*line, *column), included(included_from))]
    Handlebars {
        /// The template file the error is in: a partial's own file when it is in one, or
        /// `inline template` for a webhook string.
        file: String,
        /// The 1-based line in `file`, when known.
        line: Option<usize>,
        /// The 1-based column in `file`, when known.
        column: Option<usize>,
        /// What went wrong, naming the variable or expression.
        message: String,
        /// The template being rendered, when the error is in a partial it includes.
        included_from: Option<String>,
        /// The cause.
        #[source]
        source: Box<handlebars::RenderError>,
    },
}

fn at(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(line), Some(column)) => format!(":{line}:{column}"),
        (Some(line), None) => format!(":{line}"),
        _ => String::new(),
    }
}

fn included(from: &Option<String>) -> String {
    from.as_ref()
        .map(|f| format!(" (included from {f})"))
        .unwrap_or_default()
}

/// Handlebars' reason, reworded to name the variable, partial or helper.
fn reason(err: &handlebars::RenderError) -> String {
    use handlebars::RenderErrorReason as R;
    match err.reason() {
        R::MissingVariable(Some(path)) => format!("variable {path} is missing"),
        R::MissingVariable(None) => "a variable is missing".into(),
        R::PartialNotFound(name) => format!("partial {name:?} not found"),
        R::HelperNotFound(name) => format!("helper or variable {name:?} not found"),
        R::Other(message) => message.clone(),
        other => other.to_string(),
    }
}

/// Every template under one folder, compiled and checked.
pub struct Templates {
    /// Escapes HTML: used for `html.hbs`.
    html: Handlebars<'static>,
    /// Escapes nothing: subjects, text, SMS and webhook headers and bodies.
    plain: Handlebars<'static>,
    /// Percent-encodes every value: webhook URLs, so data cannot add a query parameter,
    /// a path step or a fragment (`{{{x}}}` puts a value in as it is).
    url: Handlebars<'static>,
    kinds: BTreeMap<String, Kinds>,
    /// The names of the partials found in `partials/`, compiled or not.
    partials: BTreeSet<String>,
    dir: PathBuf,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates")
            .field("dir", &self.dir)
            .field("kinds", &self.kinds)
            .finish_non_exhaustive()
    }
}

fn registry(escape: bool) -> Handlebars<'static> {
    let mut hb = Handlebars::new();
    hb.set_strict_mode(true);
    if !escape {
        hb.register_escape_fn(handlebars::no_escape);
    }
    helpers::register(&mut hb);
    hb
}

/// Everything but RFC 3986's unreserved characters, percent-encoded.
const URL_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn url_registry() -> Handlebars<'static> {
    let mut hb = registry(false);
    hb.register_escape_fn(|value| {
        percent_encoding::utf8_percent_encode(value, URL_VALUE).to_string()
    });
    hb
}

fn file_name(dir: &Path, folder: &str, part: &str) -> PathBuf {
    dir.join(folder).join(format!("{part}.hbs"))
}

impl Templates {
    /// Loads every template under `dir`, collecting every problem: unreadable or
    /// non-compiling files, incomplete email folders, unknown partials, partial cycles.
    /// Templates with problems are left out of the returned set.
    pub fn load(dir: &Path) -> (Templates, Vec<Problem>) {
        let mut set = Templates {
            html: registry(true),
            plain: registry(false),
            url: url_registry(),
            kinds: BTreeMap::new(),
            partials: BTreeSet::new(),
            dir: dir.to_owned(),
        };
        let mut problems = Vec::new();
        // (file, text, whether its output can reach HTML) to scan
        let mut sources: Vec<(PathBuf, String, bool)> = Vec::new();

        let folders = match std::fs::read_dir(dir) {
            Ok(entries) => {
                let mut names: Vec<String> = entries
                    .filter_map(Result::ok)
                    .filter(|e| e.path().is_dir())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect();
                names.sort();
                names
            }
            Err(err) => {
                problems.push(Problem::at(dir, 0, format!("cannot read folder: {err}")));
                return (set, problems);
            }
        };

        // Partials first, so templates that use them compile against the full set.
        let mut partials = BTreeMap::new();
        let partial_dir = dir.join(PARTIALS_DIR);
        if let Ok(entries) = std::fs::read_dir(&partial_dir) {
            let mut files: Vec<PathBuf> =
                entries.filter_map(Result::ok).map(|e| e.path()).collect();
            files.sort();
            for file in files
                .into_iter()
                .filter(|p| p.extension().is_some_and(|e| e == "hbs"))
            {
                if let Some(problem) = escapes(dir, &file) {
                    problems.push(problem);
                    continue;
                }
                let Some(name) = file.file_stem().and_then(|s| s.to_str()).map(str::to_owned)
                else {
                    continue;
                };
                match std::fs::read_to_string(&file) {
                    Ok(text) => {
                        partials.insert(name, (file, text));
                    }
                    Err(err) => {
                        problems.push(Problem::at(&file, 0, format!("cannot read file: {err}")))
                    }
                }
            }
        }
        set.partials = partials.keys().cloned().collect();
        let cyclic = check::partial_cycles(&partials, &mut problems);
        for (name, (file, text)) in &partials {
            if cyclic.contains(name) {
                continue;
            }
            if let Err(message) = check::bounded(text) {
                problems.push(Problem::at(file, 0, message));
                continue;
            }
            let compiled = set
                .html
                .register_partial(name, text.as_str())
                .and_then(|()| set.plain.register_partial(name, text.as_str()))
                .and_then(|()| set.url.register_partial(name, text.as_str()));
            match compiled {
                Ok(()) => sources.push((file.clone(), text.clone(), true)),
                Err(err) => problems.push(check::compile_problem(file, &err)),
            }
        }

        for folder in folders.iter().filter(|f| f.as_str() != PARTIALS_DIR) {
            if let Some(problem) = escapes(dir, &dir.join(folder)) {
                problems.push(problem);
                continue;
            }
            let mut kinds = Kinds::default();
            let present: Vec<&str> = EMAIL_PARTS
                .into_iter()
                .filter(|part| file_name(dir, folder, part).is_file())
                .collect();
            let has_sms = file_name(dir, folder, "sms").is_file();
            if !present.is_empty() && present.len() < EMAIL_PARTS.len() {
                let missing: Vec<String> = EMAIL_PARTS
                    .iter()
                    .filter(|p| !present.contains(p))
                    .map(|p| format!("{p}.hbs"))
                    .collect();
                problems.push(Problem::at(
                    dir.join(folder),
                    0,
                    format!("email template is missing {}", missing.join(" and ")),
                ));
            }
            if present.is_empty() && !has_sms {
                problems.push(Problem::at(
                    dir.join(folder),
                    0,
                    "template folder has neither subject.hbs/html.hbs/text.hbs nor sms.hbs",
                ));
                continue;
            }
            let mut ok = true;
            let parts: Vec<&str> = if present.len() == EMAIL_PARTS.len() {
                EMAIL_PARTS.to_vec()
            } else {
                Vec::new()
            };
            for part in parts.iter().copied().chain(has_sms.then_some("sms")) {
                let file = file_name(dir, folder, part);
                if let Some(problem) = escapes(dir, &file) {
                    problems.push(problem);
                    ok = false;
                    continue;
                }
                let text = match std::fs::read_to_string(&file) {
                    Ok(text) => text,
                    Err(err) => {
                        problems.push(Problem::at(&file, 0, format!("cannot read file: {err}")));
                        ok = false;
                        continue;
                    }
                };
                if let Err(message) = check::bounded(&text) {
                    problems.push(Problem::at(&file, 0, message));
                    ok = false;
                    continue;
                }
                let name = format!("{folder}/{part}");
                let target = if part == "html" {
                    &mut set.html
                } else {
                    &mut set.plain
                };
                match target.register_template_string(&name, &text) {
                    Ok(()) => sources.push((file, text, part == "html")),
                    Err(err) => {
                        problems.push(check::compile_problem(&file, &err));
                        ok = false;
                    }
                }
            }
            if ok {
                kinds.email = parts.len() == EMAIL_PARTS.len();
                kinds.sms = has_sms;
                set.kinds.insert(folder.clone(), kinds);
            }
        }

        for (file, text, html) in &sources {
            check::scan(file, text, *html, &set.partials, &mut problems);
        }
        problems.sort();
        problems.dedup();
        (set, problems)
    }

    /// The file of a registered template name: `welcome/html` or a partial's `greeting`.
    fn file_of(&self, name: &str) -> String {
        let file = if name.contains('/') {
            self.dir.join(format!("{name}.hbs"))
        } else {
            self.dir.join(PARTIALS_DIR).join(format!("{name}.hbs"))
        };
        file.display().to_string()
    }

    /// A render error located in its file, from rendering the template named `root`
    /// (`None` for an inline template).
    fn located(&self, root: Option<&str>, source: handlebars::RenderError) -> RenderError {
        let root_file = root.map_or_else(|| "inline template".to_owned(), |r| self.file_of(r));
        let file = match (&source.template_name, root) {
            (Some(name), Some(_)) => self.file_of(name),
            _ => root_file.clone(),
        };
        RenderError::Handlebars {
            included_from: (file != root_file).then_some(root_file),
            file,
            line: source.line_no,
            column: source.column_no,
            message: reason(&source),
            source: Box::new(source),
        }
    }

    /// Compiles and checks one template source as [`Templates::load`] checks a file of this
    /// set: compile errors, unknown variables and partials, and (when `html`) unescaped
    /// output. `file` is used for messages. Registers nothing.
    pub fn check_source(&self, file: &Path, text: &str, html: bool) -> Vec<Problem> {
        if let Err(message) = check::bounded(text) {
            return vec![Problem::at(file, 0, message)];
        }
        match handlebars::template::Template::compile(text) {
            Err(err) => vec![check::compile_problem(file, &err)],
            Ok(template) => {
                let mut problems = Vec::new();
                check::scan_compiled(file, &template, html, &self.partials, &mut problems);
                problems
            }
        }
    }

    /// The folder the templates came from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What the named template can render, if it exists and compiled.
    pub fn kinds(&self, name: &str) -> Option<Kinds> {
        self.kinds.get(name).copied()
    }

    /// Renders an email.
    ///
    /// # Errors
    /// No such email template, or a render failure such as a missing variable.
    pub fn render_email(&self, name: &str, context: &Value) -> Result<RenderedEmail, RenderError> {
        if !self.kinds(name).is_some_and(|k| k.email) {
            return Err(RenderError::Unknown {
                name: name.into(),
                kind: "email",
            });
        }
        let render = |hb: &Handlebars<'static>, part: &str| {
            let template = format!("{name}/{part}");
            hb.render(&template, context)
                .map_err(|source| self.located(Some(&template), source))
        };
        Ok(RenderedEmail {
            // A subject is one header line; a newline from a variable must not fold it.
            subject: render(&self.plain, "subject")?
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
            html: render(&self.html, "html")?,
            text: render(&self.plain, "text")?,
        })
    }

    /// Renders an SMS body.
    ///
    /// # Errors
    /// No such SMS template, or a render failure.
    pub fn render_sms(&self, name: &str, context: &Value) -> Result<String, RenderError> {
        if !self.kinds(name).is_some_and(|k| k.sms) {
            return Err(RenderError::Unknown {
                name: name.into(),
                kind: "sms",
            });
        }
        let template = format!("{name}/sms");
        self.plain
            .render(&template, context)
            .map(|s| s.trim().to_owned())
            .map_err(|source| self.located(Some(&template), source))
    }

    /// Renders an inline template string without escaping (webhook URLs, headers, bodies).
    /// It must pass [`check_inline`]: bounded, and without partials or decorators.
    ///
    /// # Errors
    /// A compile or render failure.
    pub fn render_inline(&self, template: &str, context: &Value) -> Result<String, RenderError> {
        if let Err(message) = check_inline(template) {
            let source = handlebars::RenderErrorReason::Other(format!("this template {message}"));
            return Err(self.located(None, source.into()));
        }
        self.plain
            .render_template(template, context)
            .map_err(|source| self.located(None, source))
    }

    /// Renders a webhook URL: like [`Templates::render_inline`], but every `{{value}}` is
    /// percent-encoded, so data such as `a&admin=1` or `../x` stays one value; `{{{value}}}`
    /// puts a value in as it is (a whole URL from an event, say).
    ///
    /// # Errors
    /// A compile or render failure.
    pub fn render_url(&self, template: &str, context: &Value) -> Result<String, RenderError> {
        self.url
            .render_template(template, context)
            .map_err(|source| self.located(None, source))
    }

    /// Renders every string inside a JSON value (webhook bodies).
    ///
    /// # Errors
    /// The first render failure.
    pub fn render_json(&self, value: &Value, context: &Value) -> Result<Value, RenderError> {
        Ok(match value {
            Value::String(s) => Value::String(self.render_inline(s, context)?),
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|v| self.render_json(v, context))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| Ok((k.clone(), self.render_json(v, context)?)))
                    .collect::<Result<_, RenderError>>()?,
            ),
            other => other.clone(),
        })
    }
}
