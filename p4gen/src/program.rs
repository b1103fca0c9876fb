//! What the control plane needs to know about the program a switch runs, read from the bmv2
//! JSON that p4c produced (`simple_switch_CLI`'s `write_config_to_file` fetches it from a
//! running switch): the lane count it was generated for, the slot pool size, and that every
//! table, action, register and counter the control plane uses exists under its name.

use thiserror::Error;

use crate::names;

/// Why a bmv2 JSON is not a sketchreduce program this control plane can drive.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProgramError {
    /// Not JSON, or not shaped like a bmv2 configuration.
    #[error("not a bmv2 JSON configuration: {0}")]
    Json(String),
    /// An object the control plane uses is missing (another program, or an older version).
    #[error(
        "the switch's program has no {kind} `{name}`: is it p4/sketchreduce.p4 of this version?"
    )]
    Missing {
        /// table, action, register array, counter array, header type or header field.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// The lanes header has an unexpected shape.
    #[error("header type sr_lanes_t has {0} fields; expected one of the lane counts")]
    Lanes(usize),
}

/// Facts about the compiled program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgramInfo {
    /// Lanes per packet (`SR_LANES`).
    pub lanes: u16,
    /// Slots in the pool (`SR_POOL_SLOTS`): half the size of `SrIngress.sr_round`.
    pub pool_slots: u32,
}

impl ProgramInfo {
    /// Reads a bmv2 JSON configuration.
    pub fn from_json(text: &str) -> Result<Self, ProgramError> {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| ProgramError::Json(e.to_string()))?;
        let list = |section: &str| -> Vec<&serde_json::Value> {
            v[section]
                .as_array()
                .map(|a| a.iter().collect())
                .unwrap_or_default()
        };
        let find = |section: &str, kind: &'static str, name: &str| {
            list(section)
                .into_iter()
                .find(|x| x["name"].as_str() == Some(name))
                .ok_or_else(|| ProgramError::Missing {
                    kind,
                    name: name.to_string(),
                })
        };
        let tables: Vec<&serde_json::Value> = list("pipelines")
            .into_iter()
            .flat_map(|p| p["tables"].as_array().into_iter().flatten())
            .collect();
        for t in names::TABLES {
            if !tables.iter().any(|x| x["name"].as_str() == Some(t)) {
                return Err(ProgramError::Missing {
                    kind: "table",
                    name: t.to_string(),
                });
            }
        }
        for a in names::ACTIONS {
            find("actions", "action", a)?;
        }
        for c in names::COUNTERS {
            find("counter_arrays", "counter array", c)?;
        }
        for r in names::REGISTERS {
            find("register_arrays", "register array", r)?;
        }
        let pool = find("register_arrays", "register array", names::REG_ROUND)?["size"]
            .as_u64()
            .unwrap_or(0);
        let pool_slots = u32::try_from(pool / 2).map_err(|_| {
            ProgramError::Json(format!("register {} size {pool}", names::REG_ROUND))
        })?;
        let agg = find("header_types", "header type", "sr_agg_t")?;
        let has_field = |h: &serde_json::Value, f: &str| {
            h["fields"]
                .as_array()
                .is_some_and(|fs| fs.iter().any(|x| x[0].as_str() == Some(f)))
        };
        // The v2 header carries the job's epoch where v1 had a token.
        if !has_field(agg, "epoch") {
            return Err(ProgramError::Missing {
                kind: "header field",
                name: "sr_agg_t.epoch".into(),
            });
        }
        let lanes_t = find("header_types", "header type", "sr_lanes_t")?;
        let n = lanes_t["fields"]
            .as_array()
            .map(|fs| {
                fs.iter()
                    .filter(|x| {
                        x[0].as_str().is_some_and(|s| {
                            s.len() > 1
                                && s.starts_with('l')
                                && s[1..].bytes().all(|b| b.is_ascii_digit())
                        })
                    })
                    .count()
            })
            .unwrap_or(0);
        let lanes = u16::try_from(n)
            .ok()
            .filter(|l| sketchreduce_wire::LANE_CHOICES.contains(l))
            .ok_or(ProgramError::Lanes(n))?;
        if pool_slots == 0 {
            return Err(ProgramError::Json("the slot registers have size 0".into()));
        }
        Ok(ProgramInfo { lanes, pool_slots })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal bmv2 JSON of a 64-lane program with 1024 slots: the objects the control
    /// plane reads, shaped as p4c writes them.
    pub(crate) const FIXTURE: &str = include_str!("../tests/fixtures/program-64.json");

    fn edit(f: impl FnOnce(&mut serde_json::Value)) -> String {
        let mut v: serde_json::Value = serde_json::from_str(FIXTURE).unwrap();
        f(&mut v);
        v.to_string()
    }

    #[test]
    fn reads_lanes_and_pool() {
        let p = ProgramInfo::from_json(FIXTURE).unwrap();
        assert_eq!(
            p,
            ProgramInfo {
                lanes: 64,
                pool_slots: 1024
            }
        );
        let j = edit(|v| {
            let f = v["header_types"][1]["fields"].as_array_mut().unwrap();
            f.truncate(48);
        });
        assert_eq!(ProgramInfo::from_json(&j), Err(ProgramError::Lanes(48)));
    }

    #[test]
    fn missing_objects_and_garbage() {
        let j = FIXTURE.replace(names::RANKS_TABLE, "SrIngress.other");
        assert!(matches!(
            ProgramInfo::from_json(&j),
            Err(ProgramError::Missing { kind: "table", .. })
        ));
        let j = FIXTURE.replace("\"epoch\"", "\"token\"");
        assert!(matches!(
            ProgramInfo::from_json(&j),
            Err(ProgramError::Missing {
                kind: "header field",
                ..
            })
        ));
        assert!(matches!(
            ProgramInfo::from_json("{"),
            Err(ProgramError::Json(_))
        ));
        assert!(ProgramInfo::from_json("[]").is_err());
    }
}
