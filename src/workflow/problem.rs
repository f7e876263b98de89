//! A problem found in a workflow or template, located by file, line and node.

use std::fmt;
use std::path::PathBuf;

/// One problem, printed as `workflows/cart.yaml:14: node remind: template "cart_reminder" not found`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// The file the problem is in.
    pub file: PathBuf,
    /// 1-based line, or 0 when the problem concerns the file as a whole.
    pub line: u32,
    /// The node, trigger, goal or template part the problem concerns, when there is one.
    pub place: Option<String>,
    /// What is wrong, as a sentence fragment.
    pub message: String,
}

impl Problem {
    /// A problem at a line, not tied to a node.
    pub fn at(file: impl Into<PathBuf>, line: u32, message: impl Into<String>) -> Self {
        Self {
            file: file.into(),
            line,
            place: None,
            message: message.into(),
        }
    }

    /// The same problem, attributed to `place` (such as `node remind` or `trigger`).
    pub fn in_place(mut self, place: impl Into<String>) -> Self {
        self.place = Some(place.into());
        self
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if let Some(place) = &self.place {
            write!(f, ": {place}")?;
        }
        write!(f, ": {}", self.message)
    }
}
