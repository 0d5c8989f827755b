//! The statuses a run, a model, a work unit and a check end in: typed, and read and written
//! as their names in the JSON report, the state store and the text people read. A leaf: any
//! layer may use it, and it uses nothing of the crate.

/// Defines a status enum that reads and writes as the given names: in the JSON report, the
/// state store, and the text people read.
macro_rules! status_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant,)*
        }

        impl $name {
            /// The status as it is written.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<$name, String> {
                match s {
                    $($text => Ok($name::$variant),)*
                    other => Err(format!("unknown {} {other:?}", stringify!($name))),
                }
            }
        }
    };
}

status_enum! {
    /// How a run ended (or that it has not).
    RunStatus {
        /// Still running (in the state store), or its process died without a word.
        Running = "running",
        /// Every model succeeded.
        Success = "success",
        /// A model failed, or the run stopped before any model ran.
        Failed = "failed",
        /// A dry run: planned, nothing written.
        Planned = "planned",
        /// Its process died (found by the next run taking the lock over).
        Interrupted = "interrupted",
        /// Started outside its run window: nothing ran; it is for later.
        Deferred = "deferred",
        /// Drained (its window closed, or `sluice schedule` was asked to stop): the units
        /// that ran are committed, the rest are left for the next run, which resumes it.
        Paused = "paused",
    }
}

status_enum! {
    /// How one model of a run ended.
    ModelStatus {
        /// Published (a table), or planned into its readers (a view).
        Success = "success",
        /// It failed; the error says why.
        Failed = "failed",
        /// Not run: a model upstream failed.
        Skipped = "skipped",
        /// A dry run.
        Planned = "planned",
        /// Units were left when the run was drained (or it was not started): the next run
        /// resumes it.
        Paused = "paused",
    }
}

status_enum! {
    /// The state of one work unit.
    UnitStatus {
        /// An attempt is running.
        Running = "running",
        /// Staged and recorded: a resumed run keeps it.
        Done = "done",
        /// An attempt failed with a transient error; another follows.
        Retrying = "retrying",
        /// Its last attempt failed.
        Failed = "failed",
    }
}

status_enum! {
    /// The outcome of one check.
    CheckStatus {
        /// The data passed it.
        Pass = "pass",
        /// An `error` check failed: nothing is published.
        Fail = "fail",
        /// A `warn` check failed: reported, published all the same.
        Warn = "warn",
        /// The check itself could not run (bad SQL, unknown column): nothing is published.
        Error = "error",
    }
}
