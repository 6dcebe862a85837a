//! Turning candidate responses into preference records: by a person (a choice between two
//! responses with a strength, or a ranking of several) or in bulk by rules (a synthetic
//! annotator with a label-noise knob, for studying noisy labels and rDPO without clicking
//! a thousand times). Everything here returns [`Record`]s, so what is made here is written
//! and read by `data`'s TRL JSONL like any other dataset.
//!
//! # A person's judgement
//!
//! [`pair_from_choice`]: A or B becomes chosen with `alpha` = the strength (how sure, in
//! [0.5, 1]); a tie keeps A as `chosen` with `alpha` 0.5 (half the annotators would pick
//! each side: no preference). [`ranked_from_order`]: a ranking of 3–5 responses becomes a
//! ranked list, best first.
//!
//! # The synthetic annotator
//!
//! A reward is a weighted sum of rules, written `rule[:word][=weight]` and joined by commas:
//!
//! | rule | value for a response |
//! |---|---|
//! | `length` | its number of words |
//! | `contains:WORD` | 1 if it contains WORD (whole word, any case), else 0 |
//! | `excludes:WORD` | 0 if it contains WORD, else 1 |
//! | `sentiment` | positive minus negative words of [`POSITIVE`] / [`NEGATIVE`] |
//! | `refusal` | 1 if it refuses (a phrase of [`REFUSAL_PHRASES`]), else 0 |
//!
//! e.g. `refusal=-2,sentiment,length=-0.1`. For two responses with rewards r₁ ≥ r₂ the
//! higher one is chosen and `alpha = σ(Δr / τ)` (Bradley–Terry: the fraction of annotators
//! of reward gap Δr = r₁ − r₂ at temperature τ who would agree; 0.5 for a tie). With the
//! flip rate ε each labelled pair is then swapped with probability ε (ties are never
//! swapped: they have no direction), keeping its `alpha` and marking it `"flipped": true`
//! so a class can see which labels are noise. Ranked lists are sorted by reward, then each
//! adjacent pair is swapped with probability ε in one pass from the top (`"flipped"`: the
//! number of swaps). Unpaired examples get `label = reward > 0`, flipped with probability ε.

use crate::data::{PreferencePair, RankedExample, Record, Text, RANKED_MAX, RANKED_MIN};
use crate::engine::Engine;
use crate::error::{LabError, Result};
use crate::rng::Rng;
use crate::sample::{generate, SampleConfig};
use crate::tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Fewest responses the ranked-list annotation mode shows.
pub const RANK_MODE_MIN: usize = 3;
/// Most responses the ranked-list annotation mode shows.
pub const RANK_MODE_MAX: usize = 5;

// ---------------------------------------------------------------------------------------
// Candidates: what is shown to an annotator

/// A prompt and the responses to judge, with where each response came from ("policy",
/// "reference", "dataset", ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateSet {
    pub prompt: String,
    pub responses: Vec<String>,
    pub origins: Vec<String>,
}

impl CandidateSet {
    /// The responses of a record, as the model sees them (prompt rendered, completions
    /// rendered), for re-annotating a dataset or a scenario.
    pub fn from_record(record: &Record, origin: &str) -> CandidateSet {
        let (prompt, responses) = match record {
            Record::Pair(p) => {
                let r = p.render();
                (r.prompt, vec![r.chosen, r.rejected])
            }
            Record::Ranked(r) => r.render(),
            Record::Unpaired(u) => {
                let (prompt, completion) = u.render();
                (prompt, vec![completion])
            }
        };
        let origins = vec![origin.to_string(); responses.len()];
        CandidateSet { prompt, responses, origins }
    }

    /// Add a sampled response; an empty one is left out, and one already in the set only
    /// gains the new origin (`"policy+reference"`: both models said it). True when added.
    pub fn push(&mut self, response: String, origin: &str) -> bool {
        if response.is_empty() {
            return false;
        }
        match self.responses.iter().position(|r| *r == response) {
            Some(i) => {
                if !self.origins[i].split('+').any(|o| o == origin) {
                    self.origins[i] = format!("{}+{origin}", self.origins[i]);
                }
                false
            }
            None => {
                self.responses.push(response);
                self.origins.push(origin.to_string());
                true
            }
        }
    }

    /// The set as a record to label: a pair of its two responses (A as `chosen`), or a
    /// list of its first [`RANKED_MAX`] responses in their order.
    pub fn to_record(&self) -> Result<Record> {
        match self.responses.as_slice() {
            [] | [_] => Err(LabError::param(
                "responses",
                format!(
                    "{:?} has {} response(s); two are needed to compare",
                    self.prompt,
                    self.responses.len()
                ),
            )),
            [a, b] => Ok(Record::Pair(PreferencePair::plain(&self.prompt, a, b))),
            many => Ok(Record::Ranked(RankedExample {
                prompt: Text::Plain(self.prompt.clone()),
                responses: many.iter().take(RANKED_MAX).map(|r| Text::Plain(r.clone())).collect(),
                alpha: None,
                rationale: None,
                extra: Map::new(),
            })),
        }
    }

    /// The set as one JSONL line `{"prompt","responses","origins"}` (a ranked-list record
    /// whose order means nothing yet; `alignlab annotate` reads it).
    pub fn to_json_line(&self) -> String {
        serde_json::json!({ "prompt": self.prompt, "responses": self.responses, "origins": self.origins }).to_string()
    }
}

/// Sample `n` responses to each prompt from each model (on-policy data: the policy, and the
/// reference for contrast). Every model starts from the same seed, so where policy and
/// reference still agree they say the same thing, and that response is listed once with
/// both origins. Prompts with fewer than two distinct non-empty responses are left out
/// (there is nothing to compare). Errors name the prompt that cannot be encoded.
/// `on_prompt(done, total)` is called before each prompt of each model (progress; an error
/// it returns stops the sampling).
pub fn sample_candidates(
    models: &mut [(&str, &mut dyn Engine)],
    tokenizer: &Tokenizer,
    prompts: &[String],
    n: usize,
    config: &SampleConfig,
    seed: u64,
    on_prompt: &mut dyn FnMut(usize, usize) -> Result<()>,
) -> Result<Vec<CandidateSet>> {
    if n == 0 {
        return Err(LabError::param("n", "must be at least 1"));
    }
    if !(config.temperature.is_finite() && config.temperature >= 0.0) {
        return Err(LabError::param("temperature", format!("{} must be ≥ 0", config.temperature)));
    }
    let mut sets: Vec<CandidateSet> = prompts
        .iter()
        .map(|p| CandidateSet { prompt: p.clone(), responses: Vec::new(), origins: Vec::new() })
        .collect();
    let total = models.len() * sets.len();
    let mut done = 0;
    for (origin, engine) in models.iter_mut() {
        let mut rng = Rng::new(seed);
        for (i, set) in sets.iter_mut().enumerate() {
            on_prompt(done, total)?;
            done += 1;
            let mut ids = vec![tokenizer.eot()];
            ids.extend(tokenizer.encode(&set.prompt).map_err(|e| {
                LabError::parse(format!("prompt {}: {e}", i + 1)).in_field("prompt")
            })?);
            for _ in 0..n {
                let out = generate(&mut **engine, &ids, tokenizer.eot(), config, &mut rng)?;
                set.push(tokenizer.decode(&out), origin);
            }
        }
    }
    Ok(sets.into_iter().filter(|s| s.responses.len() >= 2).collect())
}

// ---------------------------------------------------------------------------------------
// A person's judgement

/// Which of two responses a person prefers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Choice {
    A,
    B,
    Tie,
}

fn check_strength(alpha: f64) -> Result<()> {
    if (0.5..=1.0).contains(&alpha) {
        Ok(())
    } else {
        Err(LabError::param(
            "alpha",
            format!("strength {alpha} must lie in [0.5, 1] (0.5: no preference, 1: certain)"),
        ))
    }
}

/// A one-line rationale: whitespace runs (newlines included) become one space; empty is none.
pub fn one_line(rationale: &str) -> Option<String> {
    let line = rationale.split_whitespace().collect::<Vec<_>>().join(" ");
    (!line.is_empty()).then_some(line)
}

fn check_response(text: &str, what: &str) -> Result<()> {
    if text.is_empty() {
        Err(LabError::parse("empty response").in_field(what))
    } else {
        Ok(())
    }
}

/// The pair a person's choice between responses `a` and `b` makes (see the module doc).
pub fn pair_from_choice(
    prompt: &str,
    a: &str,
    b: &str,
    choice: Choice,
    strength: f64,
    rationale: &str,
) -> Result<Record> {
    check_response(a, "A")?;
    check_response(b, "B")?;
    check_strength(strength)?;
    let (chosen, rejected, alpha) = match choice {
        Choice::A => (a, b, strength),
        Choice::B => (b, a, strength),
        Choice::Tie => (a, b, 0.5),
    };
    let mut pair = PreferencePair::plain(prompt, chosen, rejected);
    pair.alpha = Some(alpha);
    pair.rationale = one_line(rationale);
    Ok(Record::Pair(pair))
}

/// The ranked list a person's ordering makes: `order` lists indices into `responses`, best
/// first, each exactly once; 3–5 responses.
pub fn ranked_from_order(
    prompt: &str,
    responses: &[String],
    order: &[usize],
    rationale: &str,
) -> Result<Record> {
    if !(RANK_MODE_MIN..=RANK_MODE_MAX).contains(&responses.len()) {
        return Err(LabError::param(
            "responses",
            format!(
                "a ranking needs {RANK_MODE_MIN} to {RANK_MODE_MAX} responses, got {}",
                responses.len()
            ),
        ));
    }
    let mut seen = vec![false; responses.len()];
    for &i in order {
        if i >= responses.len() || std::mem::replace(&mut seen[i], true) {
            return Err(LabError::param(
                "ranking",
                format!("{order:?} is not an ordering of the {} responses", responses.len()),
            ));
        }
    }
    if order.len() != responses.len() {
        return Err(LabError::param(
            "ranking",
            format!("{order:?} ranks {} of the {} responses", order.len(), responses.len()),
        ));
    }
    for (i, r) in responses.iter().enumerate() {
        check_response(r, &format!("responses[{i}]"))?;
    }
    Ok(Record::Ranked(RankedExample {
        prompt: Text::Plain(prompt.to_string()),
        responses: order.iter().map(|&i| Text::Plain(responses[i].clone())).collect(),
        alpha: None,
        rationale: one_line(rationale),
        extra: Map::new(),
    }))
}

// ---------------------------------------------------------------------------------------
// The synthetic annotator

/// Words the `sentiment` rule counts as positive (the synthetic corpus's included).
pub const POSITIVE: &[&str] = &[
    "good",
    "great",
    "happy",
    "love",
    "like",
    "nice",
    "wonderful",
    "excellent",
    "kind",
    "glad",
    "enjoy",
    "best",
    "beautiful",
    "fun",
    "pleasant",
    "awesome",
    "fantastic",
    "friendly",
    "lovely",
    "yes",
];
/// Words the `sentiment` rule counts as negative.
pub const NEGATIVE: &[&str] = &[
    "bad", "terrible", "sad", "hate", "awful", "horrible", "worst", "angry", "ugly", "boring",
    "poor", "nasty", "upset", "annoying", "hurt", "dislike", "gross", "dull", "never", "no",
];
/// Phrases the `refusal` rule detects (any case; the synthetic corpus's refusals included).
pub const REFUSAL_PHRASES: &[&str] = &[
    "i can't",
    "i cannot",
    "i can not",
    "i won't",
    "i will not",
    "i'm sorry",
    "i am sorry",
    "i refuse",
    "i'm unable",
    "i am unable",
    "i'm not able",
    "i am not able",
    "as an ai",
    "i'd rather not",
    "i would rather not",
];

/// One rule of a reward.
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    Length,
    Contains(String),
    Excludes(String),
    Sentiment,
    Refusal,
}

/// The lowercase words of a text (letters, digits and apostrophes).
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
        .collect()
}

impl Rule {
    /// The rule's value for a response (see the module doc's table).
    pub fn value(&self, response: &str) -> f64 {
        match self {
            Rule::Length => words(response).len() as f64,
            Rule::Contains(word) => f64::from(u8::from(words(response).iter().any(|w| w == word))),
            Rule::Excludes(word) => f64::from(u8::from(!words(response).iter().any(|w| w == word))),
            Rule::Sentiment => {
                let ws = words(response);
                let count = |lexicon: &[&str]| {
                    ws.iter().filter(|w| lexicon.contains(&w.as_str())).count() as f64
                };
                count(POSITIVE) - count(NEGATIVE)
            }
            Rule::Refusal => {
                let lower = response.to_lowercase().replace('’', "'");
                f64::from(u8::from(REFUSAL_PHRASES.iter().any(|p| lower.contains(p))))
            }
        }
    }

    fn spec(&self) -> String {
        match self {
            Rule::Length => "length".into(),
            Rule::Contains(w) => format!("contains:{w}"),
            Rule::Excludes(w) => format!("excludes:{w}"),
            Rule::Sentiment => "sentiment".into(),
            Rule::Refusal => "refusal".into(),
        }
    }
}

/// Largest |weight| of a rule: far above any useful one, small enough that a reward
/// (weight × a count of words) is always a finite number.
pub const MAX_RULE_WEIGHT: f64 = 1e6;

/// A reward: Σ weight · rule value.
#[derive(Debug, Clone, PartialEq)]
pub struct Reward {
    pub rules: Vec<(Rule, f64)>,
}

impl Reward {
    /// Parse `refusal=-2,sentiment,length=-0.1` (weight 1 when omitted); errors name the rule.
    /// A weight must be non-zero and within ±[`MAX_RULE_WEIGHT`].
    pub fn parse(spec: &str) -> Result<Reward> {
        let mut rules = Vec::new();
        for part in spec.split(',').map(str::trim) {
            if part.is_empty() {
                return Err(LabError::param(
                    "rules",
                    format!(
                        "empty rule in {spec:?}; write e.g. \"refusal=-2,sentiment,length=-0.1\""
                    ),
                ));
            }
            let (head, weight) = match part.split_once('=') {
                Some((head, w)) => {
                    let weight: f64 = w.trim().parse().map_err(|_| {
                        LabError::param(
                            "rules",
                            format!("weight {w:?} of {head:?} is not a number"),
                        )
                    })?;
                    if !(weight.is_finite() && weight != 0.0 && weight.abs() <= MAX_RULE_WEIGHT) {
                        return Err(LabError::param(
                            "rules",
                            format!(
                                "weight {w:?} of {head:?} must be a number in \
                                 [-{MAX_RULE_WEIGHT:e}, {MAX_RULE_WEIGHT:e}] other than 0 \
                                 (leave a rule out rather than weighting it 0)"
                            ),
                        ));
                    }
                    (head.trim(), weight)
                }
                None => (part, 1.0),
            };
            let (name, word) = match head.split_once(':') {
                Some((name, word)) => (name.trim(), Some(word.trim().to_lowercase())),
                None => (head, None),
            };
            let needs_word = |word: Option<String>| -> Result<String> {
                match word {
                    Some(w) if words(&w) == [w.clone()] => Ok(w),
                    Some(w) => Err(LabError::param(
                        "rules",
                        format!("{name}:{w} needs one word (letters, digits, apostrophes)"),
                    )),
                    None => {
                        Err(LabError::param("rules", format!("{name} needs a word: {name}:WORD")))
                    }
                }
            };
            let rule = match name {
                "length" | "sentiment" | "refusal" if word.is_some() => {
                    return Err(LabError::param("rules", format!("{name} takes no word (found {name}:{})", word.unwrap_or_default())));
                }
                "length" => Rule::Length,
                "sentiment" => Rule::Sentiment,
                "refusal" => Rule::Refusal,
                "contains" => Rule::Contains(needs_word(word)?),
                "excludes" => Rule::Excludes(needs_word(word)?),
                other => return Err(LabError::param("rules", format!("unknown rule {other:?}; rules: length, contains:WORD, excludes:WORD, sentiment, refusal"))),
            };
            rules.push((rule, weight));
        }
        Ok(Reward { rules })
    }

    /// The spec form; parses back to the same reward.
    pub fn spec(&self) -> String {
        self.rules
            .iter()
            .map(|(r, w)| if *w == 1.0 { r.spec() } else { format!("{}={w}", r.spec()) })
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn score(&self, response: &str) -> f64 {
        self.rules.iter().map(|(rule, weight)| weight * rule.value(response)).sum()
    }
}

/// The Bradley–Terry agreement of a reward gap at temperature τ: σ(|Δr| / τ), rounded to 4
/// decimals so files stay readable.
pub fn alpha_from_gap(gap: f64, temperature: f64) -> f64 {
    let alpha = 1.0 / (1.0 + (-gap.abs() / temperature).exp());
    ((alpha * 1e4).round() / 1e4).clamp(0.5, 1.0)
}

/// Rules, label noise and the α temperature of a synthetic annotator.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticAnnotator {
    pub reward: Reward,
    /// ε: probability of swapping a label, in [0, 0.5].
    pub flip_rate: f64,
    /// τ of `alpha = σ(Δr / τ)`, > 0.
    pub alpha_temperature: f64,
    pub seed: u64,
    /// Turn ranked lists into one pair: the highest reward against the lowest.
    pub lists_to_pairs: bool,
}

/// What a synthetic annotation pass did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AnnotationReport {
    pub records: usize,
    pub pairs: usize,
    pub ranked: usize,
    pub unpaired: usize,
    /// Pairs whose rewards were equal (kept, with alpha 0.5).
    pub ties: usize,
    /// Labels swapped by the noise (pairs, unpaired labels and adjacent swaps in lists).
    pub flipped: usize,
    /// Labels that could have been flipped (non-tied pairs, unpaired, adjacent list positions).
    pub flippable: usize,
}

/// Swap chosen and rejected; a joint (DOVE) pair's prompts go with their responses.
fn swap_sides(pair: &mut PreferencePair) {
    std::mem::swap(&mut pair.chosen, &mut pair.rejected);
    if pair.rejected_prompt.is_some() {
        std::mem::swap(&mut pair.prompt, &mut pair.rejected_prompt);
    }
}

fn completion_text(text: &Text, prompt: Option<&Text>) -> String {
    // Rewards read what the model would say: the rendered completion.
    let record = PreferencePair {
        prompt: Some(prompt.cloned().unwrap_or_else(|| Text::Plain(String::new()))),
        chosen: text.clone(),
        rejected: text.clone(),
        rejected_prompt: None,
        alpha: None,
        rationale: None,
        extra: Map::new(),
    };
    record.render().chosen
}

impl SyntheticAnnotator {
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=0.5).contains(&self.flip_rate) {
            return Err(LabError::param(
                "flip_rate",
                format!("{} must lie in [0, 0.5] (0.5 makes labels coin flips)", self.flip_rate),
            ));
        }
        if !(self.alpha_temperature.is_finite() && self.alpha_temperature > 0.0) {
            return Err(LabError::param(
                "alpha_temperature",
                format!("{} must be a finite number > 0", self.alpha_temperature),
            ));
        }
        if self.reward.rules.is_empty() {
            return Err(LabError::param("rules", "at least one rule is needed"));
        }
        for (rule, weight) in &self.reward.rules {
            if !(weight.is_finite() && *weight != 0.0 && weight.abs() <= MAX_RULE_WEIGHT) {
                return Err(LabError::param(
                    "rules",
                    format!(
                        "weight {weight:e} of {} must be a number in [-{MAX_RULE_WEIGHT:e}, \
                         {MAX_RULE_WEIGHT:e}] other than 0",
                        rule.spec()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// A response's reward; an error (never a NaN written as `null`) if it is not finite.
    fn score(&self, response: &str) -> Result<f64> {
        let reward = self.reward.score(response);
        if reward.is_finite() {
            Ok(reward)
        } else {
            Err(LabError::param(
                "rules",
                format!("the reward of a response is {reward}; lower the rules' weights"),
            ))
        }
    }

    /// Label every record (pairs relabelled, lists re-ranked, unpaired re-judged); prompts,
    /// rationales and extra fields are kept. Errors name the 1-based record.
    pub fn annotate(&self, records: &[Record]) -> Result<(Vec<Record>, AnnotationReport)> {
        self.validate()?;
        let mut rng = Rng::new(self.seed);
        let mut report = AnnotationReport { records: records.len(), ..Default::default() };
        let mut out = Vec::with_capacity(records.len());
        for (i, record) in records.iter().enumerate() {
            let which = |e: LabError| match e {
                LabError::InvalidParam { name, msg } => {
                    LabError::InvalidParam { name, msg: format!("record {}: {msg}", i + 1) }
                }
                other => other,
            };
            let labelled = match record {
                Record::Pair(pair) => {
                    self.label_pair(pair.clone(), &mut rng, &mut report).map_err(which)?
                }
                Record::Ranked(list) if self.lists_to_pairs => {
                    self.list_to_pair(list, &mut rng, &mut report).map_err(which)?
                }
                Record::Ranked(list) => {
                    self.rank_list(list.clone(), &mut rng, &mut report).map_err(which)?
                }
                Record::Unpaired(u) => {
                    let mut u = u.clone();
                    let (_, completion) = u.render();
                    let mut label = self.score(&completion).map_err(which)? > 0.0;
                    report.unpaired += 1;
                    report.flippable += 1;
                    u.extra.remove("flipped");
                    if rng.uniform_f64() < self.flip_rate {
                        label = !label;
                        report.flipped += 1;
                        u.extra.insert("flipped".into(), Value::Bool(true));
                    }
                    u.label = label;
                    Record::Unpaired(u)
                }
            };
            out.push(labelled);
        }
        Ok((out, report))
    }

    fn label_pair(
        &self,
        mut pair: PreferencePair,
        rng: &mut Rng,
        report: &mut AnnotationReport,
    ) -> Result<Record> {
        let rendered = pair.render();
        let gap = self.score(&rendered.chosen)? - self.score(&rendered.rejected)?;
        if gap < 0.0 {
            swap_sides(&mut pair);
        }
        report.pairs += 1;
        pair.extra.remove("flipped");
        pair.alpha = Some(self.alpha(gap)?);
        if gap == 0.0 {
            report.ties += 1;
        } else {
            report.flippable += 1;
            if rng.uniform_f64() < self.flip_rate {
                swap_sides(&mut pair);
                pair.extra.insert("flipped".into(), Value::Bool(true));
                report.flipped += 1;
            }
        }
        Ok(Record::Pair(pair))
    }

    /// `alpha` of a reward gap, checked finite.
    fn alpha(&self, gap: f64) -> Result<f64> {
        let alpha = alpha_from_gap(gap, self.alpha_temperature);
        if alpha.is_finite() {
            Ok(alpha)
        } else {
            Err(LabError::param(
                "rules",
                format!("a reward gap of {gap} gives no alpha; lower the rules' weights"),
            ))
        }
    }

    /// Responses with their rewards, best first (stable: equal rewards keep their order).
    fn sorted(&self, list: &RankedExample) -> Result<Vec<(Text, f64)>> {
        let mut scored: Vec<(Text, f64)> = list
            .responses
            .iter()
            .map(|r| Ok((r.clone(), self.score(&completion_text(r, Some(&list.prompt)))?)))
            .collect::<Result<_>>()?;
        scored.sort_by(|a, b| b.1.total_cmp(&a.1));
        Ok(scored)
    }

    fn rank_list(
        &self,
        mut list: RankedExample,
        rng: &mut Rng,
        report: &mut AnnotationReport,
    ) -> Result<Record> {
        let mut scored = self.sorted(&list)?;
        report.ranked += 1;
        let mut swaps = 0;
        for i in 0..scored.len().saturating_sub(1) {
            report.flippable += 1;
            if rng.uniform_f64() < self.flip_rate {
                scored.swap(i, i + 1);
                swaps += 1;
            }
        }
        report.flipped += swaps;
        list.alpha = Some(
            self.alpha(scored.first().map_or(0.0, |s| s.1) - scored.last().map_or(0.0, |s| s.1))?,
        );
        list.responses = scored.into_iter().map(|(t, _)| t).collect();
        list.extra.remove("flipped");
        list.extra.remove("origins");
        if swaps > 0 {
            list.extra.insert("flipped".into(), Value::from(swaps));
        }
        debug_assert!((RANKED_MIN..=RANKED_MAX).contains(&list.responses.len()));
        Ok(Record::Ranked(list))
    }

    fn list_to_pair(
        &self,
        list: &RankedExample,
        rng: &mut Rng,
        report: &mut AnnotationReport,
    ) -> Result<Record> {
        let scored = self.sorted(list)?;
        let (Some(best), Some(worst)) = (scored.first(), scored.last()) else {
            return Err(LabError::param("responses", "a ranked list has no responses"));
        };
        let (best, worst) = (best.0.clone(), worst.0.clone());
        let mut extra = list.extra.clone();
        extra.remove("origins");
        let pair = PreferencePair {
            prompt: Some(list.prompt.clone()),
            chosen: best,
            rejected: worst,
            rejected_prompt: None,
            alpha: None,
            rationale: list.rationale.clone(),
            extra,
        };
        self.label_pair(pair, rng, report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{parse_jsonl, to_jsonl};

    fn pair(chosen: &str, rejected: &str) -> Record {
        Record::Pair(PreferencePair::plain("User: Q? Assistant:", chosen, rejected))
    }

    fn annotator(rules: &str, flip_rate: f64) -> SyntheticAnnotator {
        SyntheticAnnotator {
            reward: Reward::parse(rules).unwrap(),
            flip_rate,
            alpha_temperature: 1.0,
            seed: 7,
            lists_to_pairs: false,
        }
    }

    #[test]
    fn a_choice_makes_a_pair_with_its_strength() {
        let Record::Pair(p) =
            pair_from_choice("P", " a", " b", Choice::B, 0.8, "  b is\nkinder ").unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (p.chosen, p.rejected, p.alpha, p.rationale.as_deref()),
            (" b".into(), " a".into(), Some(0.8), Some("b is kinder"))
        );
        let Record::Pair(t) = pair_from_choice("P", " a", " b", Choice::Tie, 0.9, "").unwrap()
        else {
            panic!()
        };
        assert_eq!((t.chosen, t.alpha, t.rationale), (" a".into(), Some(0.5), None));
        let err = pair_from_choice("P", " a", " b", Choice::A, 0.3, "").unwrap_err().to_string();
        assert!(err.contains("alpha") && err.contains("0.3"), "{err}");
        let err = pair_from_choice("P", "", " b", Choice::A, 0.7, "").unwrap_err().to_string();
        assert!(err.contains("\"A\"") && err.contains("empty"), "{err}");
    }

    #[test]
    fn a_ranking_is_stored_best_first_and_must_be_a_permutation() {
        let responses: Vec<String> = [" x", " y", " z"].iter().map(|s| s.to_string()).collect();
        let Record::Ranked(r) = ranked_from_order("P", &responses, &[2, 0, 1], "").unwrap() else {
            panic!()
        };
        assert_eq!(r.responses, vec![Text::from(" z"), Text::from(" x"), Text::from(" y")]);
        assert!(ranked_from_order("P", &responses, &[2, 2, 1], "").is_err());
        assert!(ranked_from_order("P", &responses, &[2, 0], "").is_err());
        assert!(ranked_from_order("P", &responses[..2], &[1, 0], "").is_err());
        // It round-trips through the TRL JSONL writer.
        let record = ranked_from_order("P", &responses, &[1, 2, 0], "y first").unwrap();
        assert_eq!(parse_jsonl(&to_jsonl(std::slice::from_ref(&record))).unwrap(), vec![record]);
    }

    #[test]
    fn rules_score_responses() {
        let r =
            Reward::parse("refusal=-2, sentiment, length=-0.5, contains:please=3, excludes:never")
                .unwrap();
        assert_eq!(Rule::Refusal.value(" I can't help with that."), 1.0);
        assert_eq!(Rule::Refusal.value(" I CANNOT."), 1.0);
        assert_eq!(Rule::Refusal.value(" Sure, here it is."), 0.0);
        assert_eq!(Rule::Sentiment.value(" I love rain. It is great."), 2.0);
        assert_eq!(Rule::Sentiment.value(" I hate rain. It is awful."), -2.0);
        assert_eq!(Rule::Length.value(" one two  three."), 3.0);
        assert_eq!(Rule::Contains("please".into()).value("Please, yes"), 1.0);
        assert_eq!(Rule::Contains("please".into()).value("pleased"), 0.0);
        // refusal −2, sentiment 0, 5 words × −0.5, please 0, no "never" +1.
        assert_eq!(r.score(" I can't help with that."), -2.0 - 2.5 + 1.0);
        assert_eq!(Reward::parse(&r.spec()).unwrap(), r);
        for bad in ["lenght", "contains", "length:x", "sentiment=abc", "contains:two words", ""] {
            let err = Reward::parse(bad).unwrap_err().to_string();
            assert!(err.contains("rules"), "{bad}: {err}");
        }
    }

    #[test]
    fn rule_weights_are_finite_non_zero_and_bounded() {
        for bad in ["length=1e308", "length=-1e7", "refusal=0", "sentiment=inf", "length=NaN"] {
            let err = Reward::parse(bad).unwrap_err().to_string();
            assert!(err.contains("rules") && err.contains("weight"), "{bad}: {err}");
        }
        // the largest weights on a long response still give a finite alpha, never null
        let long = format!(" {}", "word ".repeat(10_000));
        let data = vec![pair(&long, " short.")];
        let (out, _) = annotator("length=1e6,sentiment=-1e6", 0.0).annotate(&data).unwrap();
        let Record::Pair(p) = &out[0] else { panic!() };
        assert_eq!(p.alpha, Some(1.0));
        assert!(!to_jsonl(&out).contains("null"));
        // a reward built in code is checked too
        let mut built = annotator("length", 0.0);
        built.reward.rules[0].1 = 1e308;
        let err = built.annotate(&data).unwrap_err().to_string();
        assert!(err.contains("rules") && err.contains("1e308"), "{err}");
    }

    #[test]
    fn noiseless_labels_follow_the_reward_with_alpha_from_the_gap() {
        let data = vec![
            pair(" I hate it. It is awful.", " I love it."),
            pair(" Yes.", " Great."),
            pair(" I love it.", " I love it!"),
        ];
        let (out, report) = annotator("sentiment", 0.0).annotate(&data).unwrap();
        let Record::Pair(p0) = &out[0] else { panic!() };
        assert_eq!(p0.chosen, Text::from(" I love it."));
        // Δr = 1 − (−2) = 3: α = σ(3) = 0.9526.
        assert_eq!(p0.alpha, Some(0.9526));
        let Record::Pair(p1) = &out[1] else { panic!() };
        assert_eq!((p1.chosen.clone(), p1.alpha), (Text::from(" Yes."), Some(0.5)));
        assert_eq!((report.pairs, report.ties, report.flipped, report.flippable), (3, 2, 0, 1));
        assert_eq!(alpha_from_gap(1.0, 1.0), 0.7311);
        assert_eq!(alpha_from_gap(-1.0, 2.0), 0.6225);
    }

    #[test]
    fn the_flip_rate_is_the_fraction_of_swapped_labels() {
        let n = 20_000;
        let data: Vec<Record> = (0..n).map(|_| pair(" I love it.", " I hate it.")).collect();
        for eps in [0.0, 0.1, 0.3] {
            let (out, report) = annotator("sentiment", eps).annotate(&data).unwrap();
            let flipped = out
                .iter()
                .filter(|r| matches!(r, Record::Pair(p) if p.chosen == Text::from(" I hate it.")))
                .count();
            let marked = out.iter().filter(|r| matches!(r, Record::Pair(p) if p.extra.get("flipped") == Some(&Value::Bool(true)))).count();
            assert_eq!(flipped, report.flipped);
            assert_eq!(marked, flipped);
            let rate = flipped as f64 / n as f64;
            let sd = (eps * (1.0 - eps) / n as f64).sqrt();
            assert!((rate - eps).abs() <= 4.0 * sd + 1e-12, "ε {eps}: observed {rate}");
            // A flipped label keeps the annotator's confidence.
            assert!(out.iter().all(
                |r| matches!(r, Record::Pair(p) if p.alpha == Some(alpha_from_gap(2.0, 1.0)))
            ));
        }
        // The same seed flips the same pairs.
        assert_eq!(
            annotator("sentiment", 0.2).annotate(&data[..100]).unwrap(),
            annotator("sentiment", 0.2).annotate(&data[..100]).unwrap()
        );
        let err = annotator("sentiment", 0.7).annotate(&data[..1]).unwrap_err().to_string();
        assert!(err.contains("flip_rate"), "{err}");
    }

    #[test]
    fn lists_are_ranked_by_reward_or_cut_to_a_pair() {
        let line = r#"{"prompt": "User: Hi Assistant:", "responses": [" Hello.", " Hello there my friend.", " Hi there."], "origins": ["policy", "policy", "reference"]}"#;
        let data = parse_jsonl(line).unwrap();
        let (out, report) = annotator("length", 0.0).annotate(&data).unwrap();
        let Record::Ranked(r) = &out[0] else { panic!() };
        assert_eq!(
            r.responses,
            vec![
                Text::from(" Hello there my friend."),
                Text::from(" Hi there."),
                Text::from(" Hello.")
            ]
        );
        assert_eq!(r.alpha, Some(alpha_from_gap(3.0, 1.0)));
        assert!(!r.extra.contains_key("origins"));
        assert_eq!((report.ranked, report.flippable), (1, 2));
        let mut to_pairs = annotator("length=-1", 0.0);
        to_pairs.lists_to_pairs = true;
        let (out, _) = to_pairs.annotate(&data).unwrap();
        let Record::Pair(p) = &out[0] else { panic!() };
        assert_eq!(
            (p.chosen.clone(), p.rejected.clone()),
            (Text::from(" Hello."), Text::from(" Hello there my friend."))
        );
    }

    #[test]
    fn candidate_sets_come_from_any_record() {
        let data = parse_jsonl("{\"prompt\": [{\"role\": \"user\", \"content\": \"Hi\"}], \"chosen\": [{\"role\": \"assistant\", \"content\": \"Hello.\"}], \"rejected\": [{\"role\": \"assistant\", \"content\": \"Go.\"}]}").unwrap();
        let set = CandidateSet::from_record(&data[0], "dataset");
        assert_eq!(set.prompt, "User: Hi Assistant:");
        assert_eq!(set.responses, vec![" Hello.".to_string(), " Go.".to_string()]);
        let parsed = parse_jsonl(&set.to_json_line()).unwrap();
        let mut sampled =
            CandidateSet { prompt: "P".into(), responses: Vec::new(), origins: Vec::new() };
        assert!(sampled.push(" a".into(), "policy") && sampled.push(" b".into(), "policy"));
        assert!(
            !sampled.push(" a".into(), "reference")
                && !sampled.push(" a".into(), "reference")
                && !sampled.push(String::new(), "policy")
        );
        assert_eq!(sampled.origins, vec!["policy+reference".to_string(), "policy".to_string()]);
        assert!(
            matches!(sampled.to_record().unwrap(), Record::Pair(p) if p.chosen == Text::from(" a"))
        );
        sampled.push(" c".into(), "reference");
        assert!(
            matches!(sampled.to_record().unwrap(), Record::Ranked(r) if r.responses.len() == 3)
        );
        assert!(matches!(&parsed[0], Record::Ranked(r) if r.responses.len() == 2));
    }
}
