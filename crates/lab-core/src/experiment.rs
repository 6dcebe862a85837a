//! An experiment as one serializable value, and its URL form: a shared link reproduces the
//! run (loss, hyper-parameters, seed, scenario), as TensorFlow Playground's links do.
//!
//! URL form: `loss=sigmoid%2B0.5*sft&beta=0.1&lr=0.001&batch_size=16&steps=100&seed=0`,
//! then any loss parameter that differs from its default (`label_smoothing`,
//! `simpo_gamma`, `discopop_tau`, `exo_epsilon`, `cpo_alpha`, `kto_desirable_weight`,
//! `kto_undesirable_weight`), `weight_decay` and `eval_every` if non-zero, and `scenario`
//! if set. Unknown keys, keys given twice and numbers out of range are errors naming the
//! key, so a mistyped link never silently runs something else.
//!
//! JSON form: the serde form of [`ExperimentConfig`], read by [`ExperimentConfig::from_json`]
//! with the same strictness.

use crate::error::{LabError, Result};
use crate::loss::{LossMix, LossParams};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExperimentConfig {
    /// A loss or a weighted mix, in `LossMix` spec form (`"sigmoid"`, `"sigmoid+0.5*sft"`).
    pub loss: String,
    pub params: LossParams,
    pub lr: f64,
    pub weight_decay: f64,
    /// Pairs per step.
    pub batch_size: usize,
    pub steps: u32,
    pub seed: u64,
    pub scenario: Option<String>,
    /// Evaluate the whole dataset (the `eval/*` instruments) every this many steps, and
    /// after the last; 0 = automatic (every step up to 256 rows, then spaced so that
    /// evaluating costs about one batch of 256 rows per step).
    pub eval_every: u32,
}

impl Default for ExperimentConfig {
    fn default() -> Self {
        ExperimentConfig {
            loss: "sigmoid".into(),
            params: LossParams::default(),
            lr: 1e-3,
            weight_decay: 0.0,
            batch_size: 16,
            steps: 100,
            seed: 0,
            scenario: None,
            eval_every: 0,
        }
    }
}

/// The link codec, the one the page and the CLI share: every byte but letters, digits and
/// `-_.~*,` as `%XX`. [`link_unescape`] reverses it.
pub fn link_escape(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'*' | b',' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// A link value as text: `%XX` is the byte XX and `+` a space (as browsers' URLSearchParams
/// write a space), so a literal plus is `%2B`. A bad escape or non-UTF-8 result is an error
/// naming `key`.
pub fn link_unescape(text: &str, key: &str) -> Result<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = text.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok());
                out.push(hex.ok_or_else(|| {
                    LabError::parse(format!("bad percent escape in {text:?}")).in_field(key)
                })?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            other => {
                out.push(other);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| LabError::parse("not UTF-8 after decoding").in_field(key))
}

impl ExperimentConfig {
    /// Check everything a run needs before it starts, naming the bad setting.
    pub fn validate(&self) -> Result<LossMix> {
        let mix = LossMix::parse(&self.loss)?;
        for (kind, _) in &mix.terms {
            self.params.validate(*kind)?;
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(LabError::param("lr", format!("{} must be a finite number > 0", self.lr)));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(LabError::param(
                "weight_decay",
                format!("{} must be finite and ≥ 0", self.weight_decay),
            ));
        }
        if self.batch_size == 0 {
            return Err(LabError::param("batch_size", "must be at least 1"));
        }
        Ok(mix)
    }

    /// The settings of the link form as (key, value), values not yet escaped: the loss, β,
    /// lr, batch size, steps and seed always, the other settings only where they differ
    /// from their defaults, and the scenario when there is one.
    pub fn link_pairs(&self) -> Vec<(&'static str, String)> {
        let defaults = LossParams::default();
        let mut pairs: Vec<(&'static str, String)> = vec![
            ("loss", self.loss.clone()),
            ("beta", self.params.beta.to_string()),
            ("lr", self.lr.to_string()),
            ("batch_size", self.batch_size.to_string()),
            ("steps", self.steps.to_string()),
            ("seed", self.seed.to_string()),
        ];
        let optional = [
            ("label_smoothing", self.params.label_smoothing, defaults.label_smoothing),
            ("simpo_gamma", self.params.simpo_gamma, defaults.simpo_gamma),
            ("discopop_tau", self.params.discopop_tau, defaults.discopop_tau),
            ("exo_epsilon", self.params.exo_epsilon, defaults.exo_epsilon),
            ("cpo_alpha", self.params.cpo_alpha, defaults.cpo_alpha),
            (
                "kto_desirable_weight",
                self.params.kto_desirable_weight,
                defaults.kto_desirable_weight,
            ),
            (
                "kto_undesirable_weight",
                self.params.kto_undesirable_weight,
                defaults.kto_undesirable_weight,
            ),
            ("weight_decay", self.weight_decay, 0.0),
            ("eval_every", f64::from(self.eval_every), 0.0),
        ];
        for (key, value, default) in optional {
            if value != default {
                pairs.push((key, value.to_string()));
            }
        }
        if let Some(scenario) = &self.scenario {
            pairs.push(("scenario", scenario.clone()));
        }
        pairs
    }

    /// The link form: [`ExperimentConfig::link_pairs`] as `key=value` joined by `&`, each
    /// value escaped with [`link_escape`].
    pub fn to_query(&self) -> String {
        let pairs = self.link_pairs();
        pairs.iter().map(|(k, v)| format!("{k}={}", link_escape(v))).collect::<Vec<_>>().join("&")
    }

    /// Parse a query string (with or without the leading `?`); keys not given keep their
    /// defaults, a key given twice is an error. The result is validated.
    pub fn from_query(query: &str) -> Result<ExperimentConfig> {
        let mut config = ExperimentConfig::default();
        let mut seen: Vec<&str> = Vec::new();
        for part in query.trim_start_matches('?').split('&').filter(|p| !p.is_empty()) {
            let (key, raw) = part.split_once('=').unwrap_or((part, ""));
            if seen.contains(&key) {
                return Err(LabError::parse("given twice in the link; keep one").in_field(key));
            }
            seen.push(key);
            let value = link_unescape(raw, key)?;
            let number = |v: &str| -> Result<f64> {
                match v.parse::<f64>() {
                    Ok(x) if x.is_finite() => Ok(x),
                    _ => {
                        Err(LabError::parse(format!("{v:?} is not a finite number")).in_field(key))
                    }
                }
            };
            let whole = |v: &str| -> Result<u64> {
                v.parse::<u64>().map_err(|_| {
                    LabError::parse(format!("{v:?} is not a whole number")).in_field(key)
                })
            };
            let whole_u32 = |v: &str| -> Result<u32> {
                u32::try_from(whole(v)?).map_err(|_| {
                    LabError::parse(format!("{v} is over the limit of {}", u32::MAX)).in_field(key)
                })
            };
            match key {
                "loss" => config.loss = value,
                "beta" => config.params.beta = number(&value)?,
                "lr" => config.lr = number(&value)?,
                "batch_size" => {
                    config.batch_size = usize::try_from(whole(&value)?).map_err(|_| {
                        LabError::parse(format!("{value} is too large")).in_field(key)
                    })?
                }
                "steps" => config.steps = whole_u32(&value)?,
                "seed" => config.seed = whole(&value)?,
                "label_smoothing" => config.params.label_smoothing = number(&value)?,
                "simpo_gamma" => config.params.simpo_gamma = number(&value)?,
                "discopop_tau" => config.params.discopop_tau = number(&value)?,
                "exo_epsilon" => config.params.exo_epsilon = number(&value)?,
                "cpo_alpha" => config.params.cpo_alpha = number(&value)?,
                "kto_desirable_weight" => config.params.kto_desirable_weight = number(&value)?,
                "kto_undesirable_weight" => config.params.kto_undesirable_weight = number(&value)?,
                "weight_decay" => config.weight_decay = number(&value)?,
                "eval_every" => config.eval_every = whole_u32(&value)?,
                "scenario" => config.scenario = Some(value).filter(|s| !s.is_empty()),
                other => {
                    return Err(LabError::parse(format!(
                        "unknown setting {:?} in the link",
                        crate::json::brief_str(other)
                    )))
                }
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// Read the JSON form (`{"loss": "sigmoid", "params": {"beta": 0.1}, "lr": 0.001, ...}`),
    /// strictly: a key given twice ([`crate::json::parse_unique`]) or one the experiment
    /// does not have (here or in `params`) is an error naming it; keys not given keep their
    /// defaults. The result is validated. The caller adds the file with
    /// [`LabError::in_file`].
    pub fn from_json(text: &str) -> Result<ExperimentConfig> {
        let value = crate::json::parse_unique(text)?;
        let known = serde_json::to_value(ExperimentConfig::default())
            .expect("an experiment always serializes");
        check_known_keys(&value, &known, "")?;
        let config: ExperimentConfig =
            serde_json::from_value(value).map_err(|e| LabError::parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }
}

/// Every key of `value`'s objects must be a key of `known`'s at the same place (`path` is
/// where we are, for the message).
fn check_known_keys(
    value: &serde_json::Value,
    known: &serde_json::Value,
    path: &str,
) -> Result<()> {
    let (Some(obj), Some(known_obj)) = (value.as_object(), known.as_object()) else {
        return Ok(());
    };
    for (key, v) in obj {
        let here = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
        match known_obj.get(key) {
            Some(k) => check_known_keys(v, k, &here)?,
            None => {
                let names: Vec<&str> = known_obj.keys().map(String::as_str).collect();
                return Err(LabError::parse(format!(
                    "unknown setting; known here: {}",
                    names.join(", ")
                ))
                .in_field(&crate::json::brief_str(&here)));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_round_trips_a_mix_and_non_default_params() {
        let mut config = ExperimentConfig {
            loss: "sigmoid+0.5*sft".into(),
            lr: 5e-4,
            seed: 42,
            steps: 30,
            scenario: Some("3d-properties".into()),
            eval_every: 5,
            ..Default::default()
        };
        config.params.beta = 0.25;
        config.params.label_smoothing = 0.1;
        let query = config.to_query();
        assert!(query.contains("loss=sigmoid%2B0.5*sft"), "{query}");
        assert!(query.contains("label_smoothing=0.1"), "{query}");
        assert!(!query.contains("simpo_gamma"), "{query}");
        assert!(query.contains("eval_every=5"), "{query}");
        assert!(
            !ExperimentConfig::default().to_query().contains("eval_every"),
            "automatic is the default"
        );
        assert_eq!(ExperimentConfig::from_query(&format!("?{query}")).unwrap(), config);
    }

    #[test]
    fn bad_links_name_the_setting() {
        let err = ExperimentConfig::from_query("loss=sigmoid&beta=-1").unwrap_err().to_string();
        assert!(err.contains("beta"), "{err}");
        let err = ExperimentConfig::from_query("lr=fast").unwrap_err().to_string();
        assert!(err.contains("\"lr\""), "{err}");
        let err = ExperimentConfig::from_query("betta=0.1").unwrap_err().to_string();
        assert!(err.contains("betta"), "{err}");
        let err = ExperimentConfig::from_query("loss=dpo").unwrap_err().to_string();
        assert!(err.contains("sigmoid"), "{err}");
    }

    #[test]
    fn the_link_codec_round_trips_any_text_and_reads_plus_as_space() {
        for text in ["sigmoid+0.5*sft", "a b,c;d=e&f%g", "é 😀 \u{0}", "", "+%2B"] {
            assert_eq!(link_unescape(&link_escape(text), "k").unwrap(), text, "{text:?}");
        }
        assert_eq!(link_escape("sigmoid+0.5*sft"), "sigmoid%2B0.5*sft");
        assert_eq!(link_unescape("a+b%2Bc", "k").unwrap(), "a b+c");
        let err = link_unescape("%G1", "loss").unwrap_err().to_string();
        assert!(err.contains("loss") && err.contains("bad percent escape"), "{err}");
    }

    #[test]
    fn nothing_in_a_link_is_dropped_or_clamped_silently() {
        let err = ExperimentConfig::from_query("beta=0.1&lr=0.01&beta=0.2").unwrap_err();
        assert_eq!(err.to_string(), "field \"beta\": given twice in the link; keep one");
        let err = ExperimentConfig::from_query("steps=5000000000").unwrap_err().to_string();
        assert!(err.contains("\"steps\"") && err.contains("over the limit"), "{err}");
        let err = ExperimentConfig::from_query("simpo_gamma=inf").unwrap_err().to_string();
        assert!(err.contains("\"simpo_gamma\"") && err.contains("finite"), "{err}");
        let err = ExperimentConfig::from_query("loss=0*sigmoid").unwrap_err().to_string();
        assert!(err.contains("weight 0.0 of \"sigmoid\""), "{err}");
    }

    #[test]
    fn json_form_is_strict_and_validated() {
        let config =
            ExperimentConfig::from_json(r#"{"loss": "ipo", "params": {"beta": 0.5}, "seed": 3}"#)
                .unwrap();
        let mut want = ExperimentConfig { loss: "ipo".into(), seed: 3, ..Default::default() };
        want.params.beta = 0.5;
        assert_eq!(config, want);
        let text = serde_json::to_string(&want).unwrap();
        assert_eq!(ExperimentConfig::from_json(&text).unwrap(), want);
        let err = ExperimentConfig::from_json("{\"lr\": 0.1,\n \"lr\": 0.2}").unwrap_err();
        assert!(err.to_string().starts_with("line 2: duplicate key \"lr\""), "{err}");
        let err = ExperimentConfig::from_json(r#"{"params": {"betta": 1}}"#).unwrap_err();
        assert!(err.to_string().starts_with("field \"params.betta\": unknown setting"), "{err}");
        let err = ExperimentConfig::from_json(r#"{"lr": -1}"#).unwrap_err().to_string();
        assert!(err.contains("lr"), "{err}");
    }
}
