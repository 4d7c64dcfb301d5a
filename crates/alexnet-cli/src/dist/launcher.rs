//! Which launcher started this process, and where it placed it, read from the
//! environment the launcher sets: Open MPI's `mpirun` (`OMPI_COMM_WORLD_*`) or
//! PyTorch's `torchrun` (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`,
//! `MASTER_PORT`). Neither means a process alone.

use anyhow::{Result, bail};

/// This process's place among the processes of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Launcher {
    /// Started on its own.
    Alone,
    /// Started by Open MPI's `mpirun`.
    Mpirun(Place),
    /// Started by `torchrun`, whose agent serves its rendezvous store at
    /// `master_addr:master_port`.
    Torchrun {
        place: Place,
        master_addr: String,
        master_port: u16,
    },
}

/// A process's ranks: in the whole run and among the processes of its machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    pub rank: usize,
    pub size: usize,
    pub local_rank: usize,
    /// Processes on this machine, where the launcher says.
    pub local_size: Option<usize>,
}

/// What torchrun always sets; any one of them set means torchrun (or a script
/// imitating it) started this process.
const TORCHRUN: [&str; 5] = [
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
];

impl Launcher {
    /// The launcher of this process, from its environment.
    pub fn from_env() -> Result<Launcher> {
        Launcher::from_lookup(|name| std::env::var(name).ok())
    }

    /// The launcher that the variables `get` returns describe.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Launcher> {
        if get("OMPI_COMM_WORLD_SIZE").is_some() {
            return Ok(Launcher::Mpirun(mpirun_place(&get)?));
        }
        if TORCHRUN.iter().all(|name| get(name).is_none()) {
            return Ok(Launcher::Alone);
        }
        let missing: Vec<&str> = TORCHRUN
            .into_iter()
            .filter(|name| get(name).is_none())
            .collect();
        if !missing.is_empty() {
            bail!(
                "the environment names a launcher's process but {} {} not set: torchrun sets \
                 all of {} (start with `torchrun --no-python --nproc-per-node N alexnet ...`, \
                 or unset the others to run alone)",
                missing.join(", "),
                if missing.len() == 1 { "is" } else { "are" },
                TORCHRUN.join(", ")
            );
        }
        let place = Place {
            rank: number(&get, "RANK")?,
            size: number(&get, "WORLD_SIZE")?,
            local_rank: number(&get, "LOCAL_RANK")?,
            local_size: optional_number(&get, "LOCAL_WORLD_SIZE")?,
        };
        check_place(
            &place,
            "RANK",
            "WORLD_SIZE",
            "LOCAL_RANK",
            "LOCAL_WORLD_SIZE",
        )?;
        let master_addr = get("MASTER_ADDR").unwrap_or_default().trim().to_string();
        if master_addr.is_empty() {
            bail!("MASTER_ADDR is empty: expected the address of the run's first machine");
        }
        let port_text = get("MASTER_PORT").unwrap_or_default();
        let master_port = match port_text.trim().parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => bail!("MASTER_PORT={port_text}: expected a TCP port from 1 to 65535"),
        };
        Ok(Launcher::Torchrun {
            place,
            master_addr,
            master_port,
        })
    }

    /// This process's place, unless it runs alone.
    pub fn place(&self) -> Option<Place> {
        match self {
            Launcher::Alone => None,
            Launcher::Mpirun(place) | Launcher::Torchrun { place, .. } => Some(*place),
        }
    }
}

fn mpirun_place(get: &impl Fn(&str) -> Option<String>) -> Result<Place> {
    let place = Place {
        rank: number(get, "OMPI_COMM_WORLD_RANK")?,
        size: number(get, "OMPI_COMM_WORLD_SIZE")?,
        local_rank: number(get, "OMPI_COMM_WORLD_LOCAL_RANK")?,
        local_size: optional_number(get, "OMPI_COMM_WORLD_LOCAL_SIZE")?,
    };
    check_place(
        &place,
        "OMPI_COMM_WORLD_RANK",
        "OMPI_COMM_WORLD_SIZE",
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "OMPI_COMM_WORLD_LOCAL_SIZE",
    )?;
    Ok(place)
}

/// Refuses ranks that cannot be: a rank at or past the size, no processes.
fn check_place(place: &Place, rank: &str, size: &str, local: &str, local_size: &str) -> Result<()> {
    if place.size == 0 || place.size > i32::MAX as usize {
        bail!(
            "{size}={}: expected a number of processes from 1 to {}",
            place.size,
            i32::MAX
        );
    }
    if place.rank >= place.size {
        bail!(
            "{rank}={} with {size}={}: expected a rank below the number of processes",
            place.rank,
            place.size
        );
    }
    if let Some(locals) = place.local_size
        && (place.local_rank >= locals || locals > place.size)
    {
        bail!(
            "{local}={} with {local_size}={locals} and {size}={}: expected a local rank below \
             the processes of this machine, and no more of them than in the run",
            place.local_rank,
            place.size
        );
    }
    Ok(())
}

fn number(get: &impl Fn(&str) -> Option<String>, name: &str) -> Result<usize> {
    let text = get(name).ok_or_else(|| {
        anyhow::anyhow!("{name} is not set: the launcher sets it for every process it starts")
    })?;
    text.trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("{name}={text}: expected a whole number"))
}

fn optional_number(get: &impl Fn(&str) -> Option<String>, name: &str) -> Result<Option<usize>> {
    get(name).map(|_| number(get, name)).transpose()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::{Launcher, Place};

    fn launcher(vars: &[(&str, &str)]) -> anyhow::Result<Launcher> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Launcher::from_lookup(|name| vars.get(name).cloned())
    }

    fn error(vars: &[(&str, &str)]) -> String {
        format!(
            "{:#}",
            launcher(vars).expect_err("an incomplete environment")
        )
    }

    const TORCHRUN: [(&str, &str); 6] = [
        ("RANK", "3"),
        ("WORLD_SIZE", "8"),
        ("LOCAL_RANK", "1"),
        ("LOCAL_WORLD_SIZE", "4"),
        ("MASTER_ADDR", "10.0.0.1"),
        ("MASTER_PORT", "29500"),
    ];

    #[test]
    fn no_launcher_variables_is_a_process_alone() {
        assert_eq!(launcher(&[("PATH", "/bin")]).unwrap(), Launcher::Alone);
    }

    #[test]
    fn torchrun_places_a_process_by_its_variables() {
        let place = Place {
            rank: 3,
            size: 8,
            local_rank: 1,
            local_size: Some(4),
        };
        assert_eq!(
            launcher(&TORCHRUN).unwrap(),
            Launcher::Torchrun {
                place,
                master_addr: "10.0.0.1".into(),
                master_port: 29500,
            }
        );
    }

    #[test]
    fn mpirun_places_a_process_by_its_variables() {
        let vars = [
            ("OMPI_COMM_WORLD_SIZE", "4"),
            ("OMPI_COMM_WORLD_RANK", "2"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "0"),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "2"),
        ];
        let place = launcher(&vars).unwrap().place().unwrap();
        assert_eq!((place.rank, place.size, place.local_rank), (2, 4, 0));
        assert_eq!(place.local_size, Some(2));
    }

    #[test]
    fn a_partial_torchrun_environment_names_what_is_missing() {
        let message = error(&[("WORLD_SIZE", "2"), ("RANK", "0")]);
        assert!(
            message.contains("LOCAL_RANK, MASTER_ADDR, MASTER_PORT are not set"),
            "{message}"
        );
        let message = error(&TORCHRUN[..5]);
        assert!(message.contains("MASTER_PORT is not set"), "{message}");
    }

    #[test]
    fn impossible_ranks_and_ports_are_refused_by_name() {
        let with = |name: &str, value: &'static str| {
            let mut vars = TORCHRUN.to_vec();
            vars.retain(|(k, _)| *k != name);
            vars.push((name, value));
            error(&vars)
        };
        assert!(with("RANK", "8").contains("RANK=8 with WORLD_SIZE=8"));
        assert!(with("RANK", "x").contains("RANK=x: expected a whole number"));
        assert!(with("WORLD_SIZE", "0").contains("WORLD_SIZE=0"));
        assert!(with("WORLD_SIZE", "4294967296").contains("from 1 to 2147483647"));
        assert!(with("LOCAL_RANK", "4").contains("LOCAL_RANK=4 with LOCAL_WORLD_SIZE=4"));
        assert!(with("MASTER_PORT", "70000").contains("MASTER_PORT=70000"));
        assert!(with("MASTER_ADDR", " ").contains("MASTER_ADDR is empty"));
        let Launcher::Torchrun { master_addr, .. } = launcher(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "1"),
            ("LOCAL_RANK", "0"),
            ("MASTER_ADDR", " 10.0.0.1\n"),
            ("MASTER_PORT", "29500"),
        ])
        .unwrap() else {
            panic!("torchrun's environment");
        };
        assert_eq!(master_addr, "10.0.0.1");
        let message = error(&[("OMPI_COMM_WORLD_SIZE", "2")]);
        assert!(
            message.contains("OMPI_COMM_WORLD_RANK is not set"),
            "{message}"
        );
    }
}
