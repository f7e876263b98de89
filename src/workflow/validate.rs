//! The validator: every problem in a workflow, in one run, each with file, line and node.
//!
//! Checks edges, reachability, paths that never end, loops without a wait, node settings,
//! conditions, triggers, cron expressions, time zones, split weights, and that each send
//! node's template exists and can render its channel. Template files themselves are checked
//! when [`Templates::load`](crate::template::Templates::load) reads them.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;

use super::{
    Comparison, Condition, Entry, Node, Problem, SegmentDef, Split, Trigger, Wait, Webhook,
    Workflow,
};
use crate::engine::time::{next_cron, parse_cron};
use crate::model::{NodeId, check_zone};
use crate::template::Templates;

/// What [`check_paths`] read: everything that loaded, and every problem found.
#[derive(Debug)]
pub struct Checked {
    /// The workflows that parsed.
    pub workflows: Vec<Workflow>,
    /// The templates that compiled.
    pub templates: Templates,
    /// The segments that parsed.
    pub segments: Vec<SegmentDef>,
    /// Every problem, sorted by file and line.
    pub problems: Vec<Problem>,
}

/// Loads and checks every workflow in `workflow_paths` (files or folders) against the
/// templates in `template_dir` and the segments defined beside the workflows.
pub fn check_paths(workflow_paths: &[&Path], template_dir: &Path) -> Checked {
    let (templates, mut problems) = Templates::load(template_dir);
    let mut workflows: Vec<Workflow> = Vec::new();
    let mut segments = Vec::new();
    let mut segment_dirs: Vec<&Path> = Vec::new();
    for path in workflow_paths {
        let dir = if path.is_dir() {
            *path
        } else {
            path.parent().unwrap_or(Path::new("."))
        };
        if !segment_dirs.contains(&dir) {
            segment_dirs.push(dir);
            let (found, segment_problems) = super::load_segments(dir);
            segments.extend(found);
            problems.extend(segment_problems);
        }
        if path.is_dir() {
            let (found, load_problems) = super::load_dir(path);
            workflows.extend(found);
            problems.extend(load_problems);
        } else {
            match super::load_file(path) {
                Ok(wf) => workflows.push(wf),
                Err(found) => problems.extend(found),
            }
        }
    }
    let known: BTreeSet<&str> = segments
        .iter()
        .map(|s: &SegmentDef| s.id.as_str())
        .collect();
    for wf in &workflows {
        problems.extend(validate(wf, &templates));
        problems.extend(check_segment_names(wf, &known));
    }
    problems.sort();
    problems.dedup();
    Checked {
        workflows,
        templates,
        segments,
        problems,
    }
}

/// Segment names in triggers, branches and audiences must name defined segments.
fn check_segment_names(wf: &Workflow, known: &BTreeSet<&str>) -> Vec<Problem> {
    let file = wf.source.path.as_path();
    let unknown = |name: &str| {
        format!("unknown segment {name:?} (define it in segments.yaml beside the workflows)")
    };
    let mut problems = Vec::new();
    let in_condition = |c: &Condition, place: String, line: u32, problems: &mut Vec<Problem>| {
        c.walk(&mut |c| {
            if let Condition::InSegment(name) = c
                && !known.contains(name.as_str())
            {
                problems.push(Problem::at(file, line, unknown(name)).in_place(place.clone()));
            }
        });
    };
    match &wf.trigger.value {
        Trigger::SegmentEntered(name) | Trigger::SegmentExited(name)
            if !known.contains(name.as_str()) =>
        {
            problems.push(Problem::at(file, wf.trigger.line, unknown(name)).in_place("trigger"));
        }
        Trigger::Schedule(s) => {
            if let Some(audience) = &s.audience {
                in_condition(audience, "trigger".into(), wf.trigger.line, &mut problems);
            }
        }
        _ => {}
    }
    for (id, node) in &wf.nodes {
        if let Node::Branch(b) = &node.value {
            for case in &b.cases {
                in_condition(&case.when, format!("node {id}"), node.line, &mut problems);
            }
        }
    }
    problems
}

/// Every problem in one parsed workflow.
pub fn validate(wf: &Workflow, templates: &Templates) -> Vec<Problem> {
    let file = wf.source.path.as_path();
    let mut problems = Vec::new();
    let mut at_node = |id: &NodeId, line: u32, message: String| {
        problems.push(Problem::at(file, line, message).in_place(format!("node {id}")));
    };

    for (id, node) in &wf.nodes {
        // An edge's problem is at the edge's own line, such as its `next:`.
        for edge in node.located_edges() {
            if !wf.nodes.contains_key(&edge.value) {
                let line = if edge.line > 0 { edge.line } else { node.line };
                at_node(
                    id,
                    line,
                    format!("edge to missing node {:?}", edge.as_str()),
                );
            }
        }
        let mut notes = Vec::new();
        check_node(&node.value, templates, &mut notes);
        for note in notes {
            at_node(id, node.line, note);
        }
    }

    if !wf.nodes.contains_key(&wf.start.value) {
        problems.push(Problem::at(
            file,
            wf.start.line,
            format!("start names missing node {:?}", wf.start.value.as_str()),
        ));
    } else {
        check_graph(wf, &mut problems);
    }

    let mut trigger_notes = Vec::new();
    check_trigger(&wf.trigger.value, &mut trigger_notes);
    for note in trigger_notes {
        problems.push(Problem::at(file, wf.trigger.line, note).in_place("trigger"));
    }
    if let Some(goal) = &wf.goal {
        let mut notes = Vec::new();
        if goal.event.trim().is_empty() {
            notes.push("goal event name is empty".into());
        }
        check_comparisons(&goal.filter, &mut notes);
        for note in notes {
            problems.push(Problem::at(file, goal.line, note).in_place("goal"));
        }
    }
    if let Entry::Cooldown(d) = wf.entry
        && !d.is_positive()
    {
        problems.push(Problem::at(
            file,
            0,
            "entry cooldown must be longer than zero",
        ));
    }
    problems
}

fn check_node(node: &Node, templates: &Templates, notes: &mut Vec<String>) {
    match node {
        Node::Wait(w) => check_wait(w, notes),
        Node::WaitForEvent(w) => {
            if w.event.trim().is_empty() {
                notes.push("event name is empty".into());
            }
            if !w.timeout.is_positive() {
                notes.push(format!(
                    "timeout must be longer than zero, not {}",
                    w.timeout
                ));
            }
            check_comparisons(&w.filter, notes);
        }
        Node::Branch(b) => {
            if b.cases.is_empty() {
                notes.push("branch has no cases; use the next node directly".into());
            }
            for case in &b.cases {
                check_condition(&case.when, notes);
            }
        }
        Node::Split(s) => check_split(s, notes),
        Node::SendEmail(s) => {
            check_template(templates, &s.template, "email", |k| k.email, notes);
            for (what, addr) in [("from", &s.from), ("reply_to", &s.reply_to)] {
                if let Some(addr) = addr
                    && !addr.contains('@')
                {
                    notes.push(format!("{what} {addr:?} is not an email address"));
                }
            }
        }
        Node::SendSms(s) => check_template(templates, &s.template, "sms", |k| k.sms, notes),
        Node::Webhook(w) => check_webhook(w, notes),
        Node::Update(u) => {
            if u.set.is_empty()
                && u.unset.is_empty()
                && u.add_tags.is_empty()
                && u.remove_tags.is_empty()
            {
                notes.push(
                    "update changes nothing: give set, unset, add_tags or remove_tags".into(),
                );
            }
        }
        Node::Exit => {}
    }
}

fn check_wait(w: &Wait, notes: &mut Vec<String>) {
    let modes = [
        w.duration.is_some(),
        w.until.is_some(),
        w.until_attribute.is_some(),
    ];
    match modes.iter().filter(|m| **m).count() {
        0 => notes.push("wait needs one of duration, until or until_attribute".into()),
        1 => {}
        _ => notes.push("wait takes only one of duration, until or until_attribute".into()),
    }
    if let Some(d) = w.duration
        && d.as_signed().is_negative()
    {
        notes.push(format!("duration must not be negative, not {d}"));
    }
    if w.weekdays.is_some() && w.until.is_none() {
        notes.push("weekdays only go with until".into());
    }
    if let Some(days) = &w.weekdays
        && days.is_empty()
    {
        notes.push("weekdays is empty, so the wait would never end".into());
    }
    if (w.offset.is_some() || w.at.is_some()) && w.until_attribute.is_none() {
        notes.push("offset and at only go with until_attribute".into());
    }
    if let Some(offset) = w.offset
        && offset.as_signed().as_secs() % 86_400 != 0
    {
        notes.push(format!(
            "offset must be whole days, such as -7d, not {offset}"
        ));
    }
}

fn check_split(s: &Split, notes: &mut Vec<String>) {
    if s.arms.is_empty() {
        notes.push("split has no arms".into());
    }
    let mut names = BTreeSet::new();
    for arm in &s.arms {
        if arm.weight == 0 {
            notes.push(format!(
                "arm {:?} has weight 0; remove it instead",
                arm.name
            ));
        }
        if !names.insert(arm.name.as_str()) || arm.name == "holdout" {
            notes.push(format!("arm name {:?} is used twice or reserved", arm.name));
        }
    }
    let total: u64 = s.arms.iter().map(|a| u64::from(a.weight)).sum::<u64>() + u64::from(s.holdout);
    if total != 100 {
        notes.push(format!(
            "split weights plus holdout sum to {total}, not 100 (weights are percentages)"
        ));
    }
}

fn check_template(
    templates: &Templates,
    name: &str,
    kind: &str,
    can: impl Fn(crate::template::Kinds) -> bool,
    notes: &mut Vec<String>,
) {
    match templates.kinds(name) {
        None => notes.push(format!(
            "template {name:?} not found (or has problems) in {}",
            templates.dir().display()
        )),
        Some(k) if !can(k) => notes.push(format!(
            "template {name:?} cannot render {kind}: it needs {}",
            if kind == "sms" {
                "sms.hbs"
            } else {
                "subject.hbs, html.hbs and text.hbs"
            }
        )),
        Some(_) => {}
    }
}

fn check_webhook(w: &Webhook, notes: &mut Vec<String>) {
    let compiles = |what: &str, text: &str, notes: &mut Vec<String>| {
        if let Err(message) = crate::template::check_inline(text) {
            notes.push(format!("{what} {message}"));
        }
    };
    compiles("url", &w.url, notes);
    if !(w.url.starts_with("https://") || w.url.starts_with("http://")) {
        notes.push(format!(
            "url {:?} must start with https:// or http://",
            w.url
        ));
    }
    for (name, value) in &w.headers {
        compiles(&format!("header {name}"), value, notes);
    }
    fn strings<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a str>) {
        match v {
            serde_json::Value::String(s) => out.push(s),
            serde_json::Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
            serde_json::Value::Object(o) => o.values().for_each(|x| strings(x, out)),
            _ => {}
        }
    }
    let mut body_strings = Vec::new();
    if let Some(body) = &w.body {
        strings(body, &mut body_strings);
    }
    for s in body_strings {
        compiles("body", s, notes);
    }
}

/// 2026-01-01T00:00:00Z: where the validator looks for a schedule's next run.
const SCHEDULE_CHECKED_FROM: i64 = 1_767_225_600;

fn check_trigger(trigger: &Trigger, notes: &mut Vec<String>) {
    match trigger {
        Trigger::Event(t) => {
            if t.name.trim().is_empty() {
                notes.push("event name is empty".into());
            }
            check_comparisons(&t.filter, notes);
        }
        Trigger::SegmentEntered(segment) | Trigger::SegmentExited(segment) => {
            if segment.trim().is_empty() {
                notes.push("segment name is empty".into());
            }
        }
        Trigger::Schedule(s) => {
            match parse_cron(&s.cron) {
                Err(err) => notes.push(err),
                // Such as `0 0 30 2 *`: a schedule that would never run (croner searches a
                // few years ahead; a fixed instant keeps the validator pure).
                Ok(cron) => {
                    let since = jiff::Timestamp::from_second(SCHEDULE_CHECKED_FROM);
                    if since.is_ok_and(|t| next_cron(&cron, &jiff::tz::TimeZone::UTC, t).is_none())
                    {
                        notes.push(format!(
                            "cron expression {:?} never fires (a day such as February 30?)",
                            s.cron
                        ));
                    }
                }
            }
            if let Some(zone) = &s.timezone
                && !s.per_customer_zone()
                && let Err(err) = check_zone(zone)
            {
                notes.push(format!(
                    "{err}, or \"customer\" for each customer's own zone"
                ));
            }
            if let Some(audience) = &s.audience {
                check_condition(audience, notes);
            }
        }
        Trigger::DateAttribute(d) => {
            if d.attribute.trim().is_empty() {
                notes.push("attribute name is empty".into());
            }
            if d.offset_days.abs() > 366 {
                notes.push(format!("offset_days {} is more than a year", d.offset_days));
            }
        }
    }
}

fn check_comparisons(list: &[Comparison], notes: &mut Vec<String>) {
    for cmp in list {
        if let Err(err) = cmp.op() {
            notes.push(err);
        }
    }
}

pub(crate) fn check_condition(condition: &Condition, notes: &mut Vec<String>) {
    condition.walk(&mut |c| match c {
        Condition::Attribute(cmp) | Condition::Event(cmp) | Condition::Trigger(cmp) => {
            if let Err(err) = cmp.op() {
                notes.push(err);
            }
        }
        Condition::EventCount(count) => {
            if count.event.trim().is_empty() {
                notes.push("event_count needs an event name".into());
            }
            if let Some(w) = count.within
                && !w.is_positive()
            {
                notes.push(format!(
                    "event_count window must be longer than zero, not {w}"
                ));
            }
            if let (Some(lo), Some(hi)) = (count.at_least, count.at_most)
                && lo > hi
            {
                notes.push(format!(
                    "event_count at_least {lo} is more than at_most {hi}"
                ));
            }
            check_comparisons(&count.filter, notes);
        }
        Condition::EventSum(sum) => {
            if sum.event.trim().is_empty() || sum.property.trim().is_empty() {
                notes.push("event_sum needs an event name and a property".into());
            }
            if sum.at_least.is_none() && sum.at_most.is_none() {
                notes.push("event_sum needs at_least or at_most".into());
            }
            if let Some(w) = sum.within
                && !w.is_positive()
            {
                notes.push(format!(
                    "event_sum window must be longer than zero, not {w}"
                ));
            }
            check_comparisons(&sum.filter, notes);
        }
        Condition::HasTag(s) | Condition::InSegment(s) if s.trim().is_empty() => {
            notes.push("tag or segment name is empty".into());
        }
        _ => {}
    });
}

/// Reachability, paths that never end, and loops that spin without a wait.
fn check_graph(wf: &Workflow, problems: &mut Vec<Problem>) {
    let file = wf.source.path.as_path();
    let edges: BTreeMap<&NodeId, Vec<&NodeId>> = wf
        .nodes
        .iter()
        .map(|(id, n)| {
            (
                id,
                n.edges()
                    .into_iter()
                    .filter(|e| wf.nodes.contains_key(*e))
                    .collect(),
            )
        })
        .collect();

    let mut reachable = BTreeSet::new();
    let mut queue = VecDeque::from([&wf.start.value]);
    while let Some(id) = queue.pop_front() {
        if reachable.insert(id) {
            queue.extend(edges[id].iter().copied());
        }
    }
    for (id, node) in &wf.nodes {
        if !reachable.contains(id) {
            problems.push(
                Problem::at(
                    file,
                    node.line,
                    "unreachable: no path from start leads here",
                )
                .in_place(format!("node {id}")),
            );
        }
    }

    // Nodes that can reach an end, found backwards from the ends. A node with an edge to a
    // missing node counts as an end here: that edge is already reported.
    // Walked back along the edges once, so a long chain is not a pass per node.
    let mut ends: BTreeSet<&NodeId> = BTreeSet::new();
    let mut before: BTreeMap<&NodeId, Vec<&NodeId>> = BTreeMap::new();
    for (from, targets) in &edges {
        for to in targets {
            before.entry(*to).or_default().push(*from);
        }
    }
    let mut queue: VecDeque<&NodeId> = wf
        .nodes
        .iter()
        .filter(|(_, n)| n.can_end() || n.edges().iter().any(|e| !wf.nodes.contains_key(*e)))
        .map(|(id, _)| id)
        .collect();
    while let Some(id) = queue.pop_front() {
        if ends.insert(id) {
            queue.extend(before.get(id).into_iter().flatten().copied());
        }
    }
    // Report each trap once, where the journey falls into it: at the start, or at a node
    // reached from a node that could still have ended.
    let trapped = |id: &NodeId| reachable.contains(id) && !ends.contains(id);
    let entered_from_safety: BTreeSet<&NodeId> = edges
        .iter()
        .filter(|(from, _)| ends.contains(*from))
        .flat_map(|(_, targets)| targets.iter().copied())
        .collect();
    for (id, node) in &wf.nodes {
        if trapped(id) && (*id == wf.start.value || entered_from_safety.contains(id)) {
            problems.push(
                Problem::at(
                    file,
                    node.line,
                    "path never ends: no exit can be reached from here",
                )
                .in_place(format!("node {id}")),
            );
        }
    }

    // A cycle among nodes that do not wait spins forever within one step.
    let mut state: BTreeMap<&NodeId, u8> = BTreeMap::new(); // 1 = on stack, 2 = done
    let mut reported = BTreeSet::new();
    for start in wf.nodes.keys() {
        spin_search(
            wf,
            &edges,
            start,
            &mut state,
            &mut Vec::new(),
            &mut reported,
            problems,
        );
    }
}

fn spin_search<'a>(
    wf: &'a Workflow,
    edges: &BTreeMap<&'a NodeId, Vec<&'a NodeId>>,
    id: &'a NodeId,
    state: &mut BTreeMap<&'a NodeId, u8>,
    stack: &mut Vec<&'a NodeId>,
    reported: &mut BTreeSet<&'a NodeId>,
    problems: &mut Vec<Problem>,
) {
    if state.contains_key(id) || wf.nodes[id].waits() {
        return;
    }
    state.insert(id, 1);
    stack.push(id);
    for next in &edges[id] {
        match state.get(next) {
            Some(1) => {
                let from = stack.iter().position(|n| n == next).unwrap_or(0);
                if reported.insert(next) {
                    problems.push(
                        Problem::at(
                            wf.source.path.as_path(),
                            wf.nodes[*next].line,
                            format!("loop without a wait: {}", shown_cycle(&stack[from..], next)),
                        )
                        .in_place(format!("node {next}")),
                    );
                }
            }
            Some(_) => {}
            None => spin_search(wf, edges, next, state, stack, reported, problems),
        }
    }
    stack.pop();
    state.insert(id, 2);
}

/// The most nodes a loop's message names; a longer loop is shown by its ends and its length.
const SHOWN_CYCLE: usize = 12;

/// A loop as `a -> b -> a`, or `a -> b -> … (40 nodes) -> z -> a` when it is long: a message
/// a person can read, and not a thousand names long.
fn shown_cycle(nodes: &[&NodeId], back_to: &NodeId) -> String {
    let names: Vec<&str> = nodes.iter().map(|n| n.as_str()).collect();
    if names.len() <= SHOWN_CYCLE {
        return names
            .iter()
            .copied()
            .chain([back_to.as_str()])
            .collect::<Vec<_>>()
            .join(" -> ");
    }
    let (head, tail) = (
        &names[..SHOWN_CYCLE / 2],
        &names[names.len() - SHOWN_CYCLE / 2..],
    );
    format!(
        "{} -> … ({} nodes) -> {} -> {}",
        head.join(" -> "),
        names.len(),
        tail.join(" -> "),
        back_to.as_str()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How long `f` takes.
    // Allowed in a test: it measures its own work; the product reads time via clock::Clock.
    #[allow(clippy::disallowed_methods)]
    fn timed<T>(f: impl FnOnce() -> T) -> (T, std::time::Duration) {
        let start = std::time::Instant::now();
        let value = f();
        (value, start.elapsed())
    }

    fn workflow(nodes: &str) -> Workflow {
        let text = format!(
            "id: g\nname: G\ntrigger: {{ event: {{ name: s }} }}\nstart: n0\nnodes:\n{nodes}"
        );
        super::super::parse(Path::new("g.yaml"), &text).expect("parses")
    }

    /// Found by fuzzing: the nodes that can reach an exit were found by a pass over every
    /// node until nothing changed, a pass per link of a chain: 1.1 s to validate 1 200
    /// nodes in a debug build. Now one walk back along the edges.
    #[test]
    fn a_long_chain_is_validated_quickly() {
        let n = 1_200;
        let mut nodes: String = (0..n)
            .map(|i| {
                format!(
                    "  n{i}: {{ update: {{ add_tags: [x], next: n{} }} }}\n",
                    i + 1
                )
            })
            .collect();
        nodes.push_str(&format!("  n{n}: exit\n"));
        let wf = workflow(&nodes);
        let dir = tempfile::tempdir().expect("a folder");
        let (templates, _) = Templates::load(dir.path());
        let (problems, took) = timed(|| validate(&wf, &templates));
        assert!(problems.is_empty(), "{problems:?}");
        assert!(
            took < std::time::Duration::from_millis(250),
            "took {took:?}"
        );
    }

    /// A schedule that can never run is a problem, found quickly.
    #[test]
    fn a_cron_that_never_fires_is_a_problem() {
        let dir = tempfile::tempdir().expect("a folder");
        let (templates, _) = Templates::load(dir.path());
        for (cron, says) in [
            ("0 0 30 2 *", "never fires"),
            ("0 0 31 2,4,6,9,11 *", "never fires"),
            (",,,, * * * *", "has an empty item"),
        ] {
            let text = format!(
                "id: g\nname: G\ntrigger: {{ schedule: {{ cron: \"{cron}\" }} }}\nstart: done\nnodes:\n  done: exit\n"
            );
            let wf = super::super::parse(Path::new("g.yaml"), &text).expect("parses");
            let (problems, took) = timed(|| validate(&wf, &templates));
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(problems[0].message.contains(says), "{problems:?}");
            assert!(
                took < std::time::Duration::from_millis(250),
                "{cron}: took {took:?}"
            );
        }
    }

    /// A loop of many nodes is named by its ends and its length, not node by node.
    #[test]
    fn a_long_loop_without_a_wait_has_a_short_message() {
        let mut nodes: String = (0..100)
            .map(|i| {
                format!(
                    "  n{i}: {{ update: {{ add_tags: [x], next: n{} }} }}\n",
                    (i + 1) % 100
                )
            })
            .collect();
        nodes.push_str("  done: exit\n");
        let wf = workflow(&nodes);
        let dir = tempfile::tempdir().expect("a folder");
        let (templates, _) = Templates::load(dir.path());
        let problems = validate(&wf, &templates);
        let spin: Vec<&Problem> = problems
            .iter()
            .filter(|p| p.message.starts_with("loop without a wait"))
            .collect();
        assert_eq!(spin.len(), 1, "{problems:?}");
        assert_eq!(
            spin[0].message,
            "loop without a wait: n0 -> n1 -> n2 -> n3 -> n4 -> n5 -> … (100 nodes) -> n94 -> n95 -> n96 -> n97 -> n98 -> n99 -> n0"
        );
    }
}
