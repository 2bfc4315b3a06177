//! One sync as a timeline: every step of a task's chain from the
//! `step_run` records, in order, with forks nested under the step that sent
//! them and the import nested under the step whose hand-off it continues
//! (the export provider-sync wrote, which S3's notification turned into a
//! new chain root). Used by `temctl task show`, the ops function's
//! `task-show` and the end of the local run.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::ports::{PortError, StepHistory, StepRun, TaskAdmin, TaskStore};
use crate::tasks::{SyncTask, TaskStatus};

/// One message of the chain, with all its attempts folded in.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepNode {
    pub message_id: String,
    /// `None` for a message sent but not (yet) run.
    pub step: Option<String>,
    pub queue: Option<String>,
    pub provider: Option<String>,
    /// The first attempt's start.
    pub started_at: Option<DateTime<Utc>>,
    /// The last attempt's end.
    pub finished_at: Option<DateTime<Utc>>,
    /// From the first start to the last end.
    pub duration_ms: Option<i64>,
    pub attempts: u32,
    /// The last attempt's outcome; `unfinished` when it has none (running,
    /// or its process died), `not run` for a message no attempt recorded.
    pub outcome: String,
    /// The last attempt's error, if any.
    pub error: Option<String>,
    pub children: Vec<StepNode>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Timeline {
    pub task_id: String,
    pub task: Option<SyncTask>,
    pub steps: Vec<StepNode>,
}

/// The chain as a forest: roots are the messages nothing recorded sent
/// (sync-manager's SyncProfile), in start order.
pub fn build(runs: &[StepRun]) -> Vec<StepNode> {
    let mut by_message: BTreeMap<&str, Vec<&StepRun>> = BTreeMap::new();
    for run in runs {
        by_message.entry(&run.message_id).or_default().push(run);
    }
    for attempts in by_message.values_mut() {
        attempts.sort_by_key(|r| (r.started_at, r.attempt, r.id));
    }
    let first_start = |id: &str| by_message.get(id).map(|a| a[0].started_at);

    // Who sent whom: the children an attempt recorded, and hand-offs (the
    // earliest message holding a token opened it; later ones continue it).
    let mut parent: HashMap<String, String> = HashMap::new();
    let mut sent: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (id, attempts) in &by_message {
        let mut seen = HashSet::new();
        for child in attempts.iter().flat_map(|a| a.children.iter()) {
            if child != id && seen.insert(child.clone()) {
                parent
                    .entry(child.clone())
                    .or_insert_with(|| id.to_string());
                sent.entry(id.to_string()).or_default().push(child.clone());
            }
        }
    }
    let mut holders: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (id, attempts) in &by_message {
        if let Some(token) = attempts.iter().find_map(|a| a.handoff.as_deref()) {
            holders.entry(token).or_default().push(id);
        }
    }
    for ids in holders.values_mut() {
        ids.sort_by_key(|id| first_start(id));
        let opener = ids[0];
        for continuation in &ids[1..] {
            if !parent.contains_key(*continuation) {
                parent.insert(continuation.to_string(), opener.to_string());
                sent.entry(opener.to_string())
                    .or_default()
                    .push(continuation.to_string());
            }
        }
    }

    fn node(
        id: &str,
        by_message: &BTreeMap<&str, Vec<&StepRun>>,
        sent: &BTreeMap<String, Vec<String>>,
        visiting: &mut HashSet<String>,
    ) -> StepNode {
        visiting.insert(id.to_string());
        let mut children = Vec::new();
        for child in sent.get(id).into_iter().flatten() {
            if !visiting.contains(child) {
                children.push(node(child, by_message, sent, visiting));
            }
        }
        children.sort_by_key(|c| (c.started_at.is_none(), c.started_at));
        let Some(attempts) = by_message.get(id) else {
            return StepNode {
                message_id: id.to_string(),
                step: None,
                queue: None,
                provider: None,
                started_at: None,
                finished_at: None,
                duration_ms: None,
                attempts: 0,
                outcome: "not run".into(),
                error: None,
                children,
            };
        };
        let first = attempts[0];
        let last = attempts[attempts.len() - 1];
        let finished_at = last.finished_at;
        StepNode {
            message_id: id.to_string(),
            step: Some(first.step.clone()),
            queue: first.queue.clone(),
            provider: first.provider.clone(),
            started_at: Some(first.started_at),
            finished_at,
            duration_ms: finished_at.map(|end| (end - first.started_at).num_milliseconds()),
            attempts: attempts.len() as u32,
            outcome: last.outcome.clone().unwrap_or_else(|| "unfinished".into()),
            error: last.error.clone(),
            children,
        }
    }

    let mut roots: Vec<&str> = by_message
        .keys()
        .copied()
        .filter(|id| !parent.contains_key(*id))
        .collect();
    roots.sort_by_key(|id| first_start(id));
    let mut visiting = HashSet::new();
    let mut forest: Vec<StepNode> = roots
        .into_iter()
        .map(|id| node(id, &by_message, &sent, &mut visiting))
        .collect();
    // A cycle of parents (ids a broken sender reused) has no root: show its
    // members rather than lose them.
    for id in by_message.keys() {
        if !visiting.contains(*id) {
            forest.push(node(id, &by_message, &sent, &mut visiting));
        }
    }
    forest
}

pub async fn timeline(
    history: &dyn StepHistory,
    tasks: &dyn TaskStore,
    task_id: &str,
) -> Result<Timeline, PortError> {
    let runs = history.of_task(task_id).await?;
    Ok(Timeline {
        task_id: task_id.to_string(),
        task: tasks.get(task_id).await?,
        steps: build(&runs),
    })
}

/// `850ms`, `4.2s`, `3m12s`.
pub fn human_duration(ms: i64) -> String {
    match ms {
        i64::MIN..=999 => format!("{}ms", ms.max(0)),
        1000..=59_999 => format!("{:.1}s", ms as f64 / 1000.0),
        _ => format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

fn time(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(
        || "-".to_string(),
        |t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
    )
}

/// The timeline as text: a header for the task, then one line per step,
/// indented under the step that sent it.
pub fn render(timeline: &Timeline) -> String {
    let mut out = String::new();
    match &timeline.task {
        Some(t) => {
            let took = t
                .finished_at
                .map(|end| {
                    format!(
                        ", took {}",
                        human_duration((end - t.created_at).num_milliseconds())
                    )
                })
                .unwrap_or_default();
            out.push_str(&format!(
                "task {} ({}, profile {}, period {}): {}; created {}{}\n",
                t.task_id,
                t.provider,
                t.profile_id,
                t.period,
                t.status,
                time(Some(t.created_at)),
                took
            ));
            if let Some(error) = &t.error {
                out.push_str(&format!("  error: {error}\n"));
            }
        }
        None => out.push_str(&format!(
            "task {} (no task record; expired?)\n",
            timeline.task_id
        )),
    }
    if timeline.steps.is_empty() {
        out.push_str(
            "  no step was recorded for this task (records expire after STEP_RECORD_TTL_DAYS)\n",
        );
        return out;
    }
    // Deep chains (Routit's polls, then the import and the totals) indent
    // far: the step column is as wide as its widest label.
    fn widest(node: &StepNode, indent: usize) -> usize {
        let own = indent + node.step.as_deref().map_or(13, str::len);
        node.children
            .iter()
            .map(|child| widest(child, indent + 3))
            .fold(own, usize::max)
    }
    let width = timeline
        .steps
        .iter()
        .map(|node| widest(node, 0))
        .fold(44, usize::max);
    out.push_str(&format!(
        "  {:<width$} {:<23} {:>9} {:>8}  {:<14} {}\n",
        "step", "start", "duration", "attempts", "outcome", "message / queue"
    ));
    fn line(out: &mut String, node: &StepNode, prefix: &str, last: bool, top: bool, width: usize) {
        let branch = if top {
            ""
        } else if last {
            "└─ "
        } else {
            "├─ "
        };
        let label = format!(
            "{prefix}{branch}{}",
            node.step.as_deref().unwrap_or("(not run yet)")
        );
        let queue = node.queue.as_deref().unwrap_or("-");
        out.push_str(&format!(
            "  {:<width$} {:<23} {:>9} {:>8}  {:<14} {} / {}\n",
            label,
            time(node.started_at),
            node.duration_ms.map_or("-".into(), human_duration),
            node.attempts,
            node.outcome,
            node.message_id,
            queue
        ));
        if let Some(error) = &node.error {
            let pad = " ".repeat(prefix.chars().count() + 3);
            out.push_str(&format!(
                "  {pad}error: {}\n",
                crate::ops::failed::first_line(error)
            ));
        }
        let child_prefix = if top {
            prefix.to_string()
        } else if last {
            format!("{prefix}   ")
        } else {
            format!("{prefix}│  ")
        };
        for (i, child) in node.children.iter().enumerate() {
            line(
                out,
                child,
                &child_prefix,
                i + 1 == node.children.len(),
                false,
                width,
            );
        }
    }
    for node in &timeline.steps {
        line(&mut out, node, "", true, true, width);
    }
    out
}

/// `task list`: tasks created in the last `since`, optionally one status
/// and one provider, newest first.
pub async fn list_tasks(
    tasks: &dyn TaskAdmin,
    since: Duration,
    status: Option<TaskStatus>,
    provider: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Vec<SyncTask>, PortError> {
    let mut found: Vec<SyncTask> = tasks
        .tasks_created_between(now - since, now + Duration::seconds(1))
        .await?
        .into_iter()
        .filter(|t| status.is_none_or(|s| t.status == s))
        .filter(|t| provider.is_none_or(|p| t.provider == p))
        .collect();
    found.sort_by_key(|t| std::cmp::Reverse(t.created_at));
    Ok(found)
}

pub fn render_tasks(tasks: &[SyncTask], now: DateTime<Utc>) -> String {
    let mut out = format!(
        "{:<38} {:<10} {:>7} {:<10} {:<10} {:<20} {:>8}  {}\n",
        "task", "provider", "profile", "period", "status", "created", "age", "error"
    );
    for t in tasks {
        out.push_str(&format!(
            "{:<38} {:<10} {:>7} {:<10} {:<10} {:<20} {:>8}  {}\n",
            t.task_id,
            t.provider,
            t.profile_id,
            t.period,
            t.status,
            t.created_at.format("%Y-%m-%d %H:%M:%S"),
            crate::ops::failed::human_age((now - t.created_at).num_seconds()),
            t.error
                .as_deref()
                .map(crate::ops::failed::first_line)
                .unwrap_or("")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: &str, step: &str, attempt: u32, start_s: i64, took_ms: i64) -> StepRun {
        let t0 = DateTime::parse_from_rfc3339("2026-12-01T01:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let started_at = t0 + Duration::seconds(start_s);
        StepRun {
            id: start_s * 10 + i64::from(attempt),
            message_id: id.into(),
            attempt,
            step: step.into(),
            function_name: "f".into(),
            queue: Some("q".into()),
            provider: Some("routit".into()),
            task_id: Some("t".into()),
            trace_id: "trace".into(),
            depth: 0,
            chain_started_at: t0,
            started_at,
            finished_at: Some(started_at + Duration::milliseconds(took_ms)),
            outcome: Some("completed".into()),
            error: None,
            error_kind: None,
            children: vec![],
            handoff: None,
        }
    }

    fn sync_chain() -> Vec<StepRun> {
        let mut sync = run("sync", "SyncProfile", 1, 0, 1200);
        sync.handoff = Some("s3://b/inbox/routit/x.zip".into());
        let mut import = run("import", "ImportCdrFile", 1, 3, 800);
        import.handoff = Some("s3://b/inbox/routit/x.zip".into());
        import.children = vec!["dispatch".into()];
        let mut dispatch = run("dispatch", "DispatchTotals", 1, 5, 100);
        dispatch.children = vec!["calc-a".into(), "calc-b".into()];
        let mut calc_a_1 = run("calc-a", "CalculateTotals", 1, 6, 50);
        calc_a_1.outcome = Some("retry".into());
        calc_a_1.error = Some("database busy".into());
        let mut calc_a_2 = run("calc-a", "CalculateTotals", 2, 8, 70);
        calc_a_2.children = vec!["invoice-a".into()];
        let calc_b = run("calc-b", "CalculateTotals", 1, 7, 40);
        let invoice = run("invoice-a", "GenerateInvoice", 1, 9, 30);
        // Out of order on purpose: the tree does not depend on row order.
        vec![invoice, calc_b, calc_a_2, dispatch, import, calc_a_1, sync]
    }

    #[test]
    fn the_import_nests_under_the_step_whose_hand_off_it_continues_and_forks_nest_under_their_sender(
    ) {
        let forest = build(&sync_chain());
        assert_eq!(forest.len(), 1);
        let sync = &forest[0];
        assert_eq!(sync.step.as_deref(), Some("SyncProfile"));
        let import = &sync.children[0];
        assert_eq!(import.step.as_deref(), Some("ImportCdrFile"));
        let dispatch = &import.children[0];
        let calcs: Vec<&str> = dispatch
            .children
            .iter()
            .map(|c| c.message_id.as_str())
            .collect();
        assert_eq!(calcs, vec!["calc-a", "calc-b"]);
        let calc_a = &dispatch.children[0];
        assert_eq!(calc_a.attempts, 2);
        assert_eq!(calc_a.outcome, "completed");
        assert_eq!(
            calc_a.duration_ms,
            Some(2070),
            "from the first start to the last end"
        );
        assert_eq!(calc_a.children[0].step.as_deref(), Some("GenerateInvoice"));
    }

    #[test]
    fn a_child_sent_but_not_run_is_shown_as_not_run() {
        let mut sync = run("sync", "SyncProfile", 1, 0, 10);
        sync.children = vec!["next".into()];
        let forest = build(&[sync]);
        assert_eq!(forest[0].children[0].outcome, "not run");
    }

    #[test]
    fn an_attempt_whose_process_died_is_unfinished() {
        let mut died = run("sync", "SyncProfile", 1, 0, 10);
        died.finished_at = None;
        died.outcome = None;
        let forest = build(&[died]);
        assert_eq!(forest[0].outcome, "unfinished");
        assert_eq!(forest[0].duration_ms, None);
    }

    #[test]
    fn the_rendered_timeline_lists_every_step_in_order_with_durations() {
        let timeline = Timeline {
            task_id: "t".into(),
            task: None,
            steps: build(&sync_chain()),
        };
        let text = render(&timeline);
        let order: Vec<&str> = [
            "SyncProfile",
            "ImportCdrFile",
            "DispatchTotals",
            "CalculateTotals",
            "GenerateInvoice",
        ]
        .to_vec();
        let mut at = 0;
        for step in order {
            let found = text[at..]
                .find(step)
                .unwrap_or_else(|| panic!("{step} in\n{text}"));
            at += found;
        }
        assert!(text.contains("1.2s"), "{text}");
        assert!(text.contains("└─ ImportCdrFile"), "{text}");
        assert!(
            !text.contains("error: database busy"),
            "only the last attempt's error: {text}"
        );
    }

    #[test]
    fn a_deep_chain_keeps_its_columns_aligned() {
        // Routit's polls, the import and the totals nest a dozen deep.
        let names = ["SyncProfile", "RoutitPollExport", "GenerateInvoice"];
        let mut runs = Vec::new();
        for depth in 0..14 {
            let mut r = run(&format!("m{depth}"), names[depth % 3], 1, depth as i64, 20);
            r.children = vec![format!("m{}", depth + 1)];
            if depth == 13 {
                r.children.clear();
            }
            runs.push(r);
        }
        let text = render(&Timeline {
            task_id: "t".into(),
            task: None,
            steps: build(&runs),
        });
        let starts: Vec<usize> = text
            .lines()
            .filter(|l| l.contains("2026-12-01 01:"))
            .map(|l| l.chars().position(|c| c.is_ascii_digit()).unwrap())
            .collect();
        assert_eq!(starts.len(), 14, "{text}");
        assert!(starts.iter().all(|&s| s == starts[0]), "{text}");
    }

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(human_duration(850), "850ms");
        assert_eq!(human_duration(4200), "4.2s");
        assert_eq!(human_duration(192_000), "3m12s");
    }
}
