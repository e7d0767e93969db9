//! The batch job: item tags, then user profiles, then explanations, each in a fixed order.
//! Every result is committed as it is made, and rows already present under the run's key are
//! skipped, so a run that is stopped or killed resumes where it ended and a finished run
//! repeated costs nothing.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use indicatif::ProgressBar;
use recsys::data::Dataset;
use serde::Serialize;
use tokio::sync::OnceCell;

use super::parse::{grounding, parse_explanation, parse_profile, parse_tags, Grounding};
use super::prompt::{explanation_request, item_tags_request, liked_like, profile_request};
use super::{enrichment_key, profile_history, EnrichmentKey, Plan};
use crate::db::{Db, Explanation, ItemTags, UserProfile};
use crate::llm::local::LocalLlm;
use crate::llm::{Reply, Request};

/// How a run may end early.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Make at most this many new rows, then stop (a time-boxed run; it resumes like any).
    pub max_new: Option<usize>,
    /// Set (on Ctrl-C, say) to stop once the row in flight is stored.
    pub stop: Arc<AtomicBool>,
}

/// What one stage did in a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct StageReport {
    /// Rows made and stored by this run.
    pub made: usize,
    /// Rows already present, not asked again.
    pub skipped: usize,
    /// Of the rows made, those whose reply was not (fully) usable.
    pub unusable: usize,
    /// Seconds the model spent on the rows made.
    pub model_seconds: f64,
}

impl StageReport {
    /// Mean model seconds per row made.
    pub fn seconds_per_row(&self) -> Option<f64> {
        (self.made > 0).then(|| self.model_seconds / self.made as f64)
    }

    fn record(&mut self, made: &Made) {
        self.made += 1;
        self.unusable += usize::from(made.problem.is_some());
        self.model_seconds += made.seconds;
    }
}

/// What a run did, stage by stage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct RunReport {
    pub item_tags: StageReport,
    pub profiles: StageReport,
    pub explanations: StageReport,
    /// Explanations not asked because the user has no usable profile.
    pub explanations_without_profile: usize,
    /// Of the explanations made, those that name the recommended movie.
    pub explanations_naming_item: usize,
    /// Of the explanations made, those that name a watched movie their prompt showed.
    pub explanations_naming_liked: usize,
    /// Whether the run ended before its plan did (`max_new` or the stop flag).
    pub stopped: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Job {
    Tags(u32),
    Profile(usize),
    Explain(usize, u32),
}

/// A row just stored.
struct Made {
    problem: Option<String>,
    seconds: f64,
    /// For an explanation, what its sentence names.
    grounding: Option<Grounding>,
}

/// Runs plans for one dataset with one model, under their key.
pub struct Enricher<'a> {
    db: &'a Db,
    llm: Arc<LocalLlm>,
    dataset: &'a Dataset,
    key: EnrichmentKey,
    /// The stored item tags, read at the first explanation (after this run's tagging).
    item_tags: OnceCell<HashMap<String, Vec<String>>>,
}

impl<'a> Enricher<'a> {
    pub fn new(db: &'a Db, llm: Arc<LocalLlm>, dataset: &'a Dataset) -> Enricher<'a> {
        let key = enrichment_key(dataset, llm.name());
        Enricher {
            db,
            llm,
            dataset,
            key,
            item_tags: OnceCell::new(),
        }
    }

    /// The key this enricher's rows are stored under.
    pub fn key(&self) -> &EnrichmentKey {
        &self.key
    }

    /// Checks that every id of `plan` names a user or item of the dataset.
    fn check(&self, plan: &Plan) -> anyhow::Result<()> {
        let (n_users, n_items) = (self.dataset.users.len(), self.dataset.items.len());
        let users = plan
            .users
            .iter()
            .chain(plan.explanations.iter().map(|p| &p.0));
        if let Some(bad) = users.into_iter().find(|&&u| u >= n_users) {
            anyhow::bail!("user {bad} is not below the dataset's {n_users} users");
        }
        let items = plan
            .items
            .iter()
            .chain(plan.explanations.iter().map(|p| &p.1));
        if let Some(bad) = items.into_iter().find(|&&i| i as usize >= n_items) {
            anyhow::bail!("item {bad} is not below the dataset's {n_items} items");
        }
        Ok(())
    }

    /// Runs `plan` (items, then users, then explanations), skipping rows already stored and
    /// committing each new one before asking the next question.
    pub async fn run(
        &self,
        plan: &Plan,
        options: &RunOptions,
        progress: &ProgressBar,
    ) -> anyhow::Result<RunReport> {
        self.check(plan)?;
        let jobs: Vec<Job> = plan
            .items
            .iter()
            .map(|&i| Job::Tags(i))
            .chain(plan.users.iter().map(|&u| Job::Profile(u)))
            .chain(plan.explanations.iter().map(|&(u, i)| Job::Explain(u, i)))
            .collect();
        progress.set_length(jobs.len() as u64);
        let mut done = self.stored_jobs().await?;
        let mut profiles: HashMap<String, UserProfile> = self
            .db
            .profiles(&self.key)
            .await?
            .into_iter()
            .map(|p| (p.user_id.clone(), p))
            .collect();
        tracing::info!(
            "enriching {} with {}: {} item tags, {} profiles, {} explanations planned ({} rows stored already)",
            self.key.dataset,
            self.key.model,
            plan.items.len(),
            plan.users.len(),
            plan.explanations.len(),
            done.len()
        );
        let mut report = RunReport::default();
        let mut made_total = 0;
        for job in jobs {
            if options.stop.load(Ordering::Relaxed)
                || options.max_new.is_some_and(|max| made_total >= max)
            {
                report.stopped = true;
                break;
            }
            progress.inc(1);
            let stage = match job {
                Job::Tags(_) => &mut report.item_tags,
                Job::Profile(_) => &mut report.profiles,
                Job::Explain(..) => &mut report.explanations,
            };
            if done.contains(&job) {
                stage.skipped += 1;
                continue;
            }
            let made = match job {
                Job::Tags(item) => self.tag_item(item).await?,
                Job::Profile(user) => {
                    let profile = self.profile_user(user).await?;
                    let made = Made {
                        problem: profile.problem.clone(),
                        seconds: profile.seconds,
                        grounding: None,
                    };
                    profiles.insert(profile.user_id.clone(), profile);
                    made
                }
                Job::Explain(user, item) => {
                    let raw_user = &self.dataset.users[user];
                    match profiles.get(raw_user).filter(|p| !p.profile.is_empty()) {
                        Some(profile) => self.explain(user, profile, item).await?,
                        None => {
                            report.explanations_without_profile += 1;
                            continue;
                        }
                    }
                }
            };
            if let Some(problem) = &made.problem {
                tracing::warn!("{job:?}: {problem}");
            }
            stage.record(&made);
            if let Some(g) = made.grounding {
                report.explanations_naming_item += usize::from(g.names_item);
                report.explanations_naming_liked += usize::from(g.names_liked);
            }
            done.insert(job);
            made_total += 1;
        }
        progress.finish_and_clear();
        Ok(report)
    }

    /// The jobs whose rows are already stored under the key.
    async fn stored_jobs(&self) -> anyhow::Result<HashSet<Job>> {
        let items = self.dataset.item_index();
        let users: HashMap<&str, usize> = self
            .dataset
            .users
            .iter()
            .enumerate()
            .map(|(i, u)| (u.as_str(), i))
            .collect();
        let mut done = HashSet::new();
        for t in self.db.item_tags(&self.key).await? {
            done.extend(items.get(&t.item_id).map(|&i| Job::Tags(i)));
        }
        for p in self.db.profiles(&self.key).await? {
            done.extend(users.get(p.user_id.as_str()).map(|&u| Job::Profile(u)));
        }
        for e in self.db.explanations(&self.key).await? {
            if let (Some(&u), Some(&i)) = (users.get(e.user_id.as_str()), items.get(&e.item_id)) {
                done.insert(Job::Explain(u, i));
            }
        }
        Ok(done)
    }

    /// Asks the model off the async runtime.
    async fn ask(&self, request: Request) -> anyhow::Result<Reply> {
        let llm = self.llm.clone();
        tokio::task::spawn_blocking(move || llm.complete(&request, false))
            .await
            .context("the model's thread failed")?
    }

    async fn tag_item(&self, item: u32) -> anyhow::Result<Made> {
        let entry = &self.dataset.items[item as usize];
        let reply = self.ask(item_tags_request(&entry.meta)).await?;
        let parsed = parse_tags(&reply.text);
        tracing::debug!("item {}: {:?}", entry.raw_id, parsed.tags);
        let row = ItemTags {
            item_id: entry.raw_id.clone(),
            tags: parsed.tags,
            reply: reply.text,
            problem: parsed.problem,
            seconds: reply.seconds,
        };
        self.db.insert_item_tags(&self.key, &row).await?;
        Ok(Made {
            problem: row.problem,
            seconds: row.seconds,
            grounding: None,
        })
    }

    async fn profile_user(&self, user: usize) -> anyhow::Result<UserProfile> {
        let history: Vec<_> = profile_history(self.dataset, user)
            .iter()
            .map(|&i| &self.dataset.items[i as usize].meta)
            .collect();
        let reply = self.ask(profile_request(&history)).await?;
        let parsed = parse_profile(&reply.text);
        let row = UserProfile {
            user_id: self.dataset.users[user].clone(),
            profile: parsed.profile,
            tags: parsed.tags,
            reply: reply.text,
            problem: parsed.problem,
            seconds: reply.seconds,
        };
        tracing::debug!("user {}: {:?}", row.user_id, row.tags);
        self.db.insert_profile(&self.key, &row).await?;
        Ok(row)
    }

    async fn explain(&self, user: usize, profile: &UserProfile, item: u32) -> anyhow::Result<Made> {
        let entry = &self.dataset.items[item as usize];
        let tags = self.item_tags().await?;
        let no_tags = Vec::new();
        let tags_of = |raw_id: &str| tags.get(raw_id).unwrap_or(&no_tags).as_slice();
        let history: Vec<_> = profile_history(self.dataset, user)
            .iter()
            .map(|&i| &self.dataset.items[i as usize])
            .map(|watched| (&watched.meta, tags_of(&watched.raw_id)))
            .collect();
        let item_tags = tags_of(&entry.raw_id);
        let liked = liked_like(&history, &entry.meta, item_tags);
        let request = explanation_request(&profile.tags, &liked, &entry.meta, item_tags);
        let reply = self.ask(request).await?;
        let parsed = parse_explanation(&reply.text);
        let liked_titles: Vec<&str> = liked.iter().map(|m| m.title.as_str()).collect();
        let grounding = grounding(&parsed.sentence, &entry.meta.title, &liked_titles);
        let row = Explanation {
            user_id: profile.user_id.clone(),
            item_id: entry.raw_id.clone(),
            sentence: parsed.sentence,
            reply: reply.text,
            problem: parsed.problem,
            seconds: reply.seconds,
        };
        self.db.insert_explanation(&self.key, &row).await?;
        Ok(Made {
            problem: row.problem,
            seconds: row.seconds,
            grounding: Some(grounding),
        })
    }

    /// Every item's stored tags by raw id, read once per run.
    async fn item_tags(&self) -> anyhow::Result<&HashMap<String, Vec<String>>> {
        self.item_tags
            .get_or_try_init(|| async {
                let rows = self.db.item_tags(&self.key).await?;
                anyhow::Ok(rows.into_iter().map(|r| (r.item_id, r.tags)).collect())
            })
            .await
    }
}
