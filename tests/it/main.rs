//! End-to-end tests: the real `sluice` binary on `testdata/`, outputs checked against
//! independent computations. One test binary (each links DataFusion: keep it to one).

mod support;

mod accounting;
mod bad_input;
mod checks;
mod cloud;
mod cluster;
mod conformance;
mod database_guards;
mod database_incremental;
mod database_sinks;
mod database_sinks_mariadb;
mod database_tls;
mod databases;
mod drift;
mod encodings;
mod errors;
mod formats;
mod headers;
mod incremental;
mod joins;
mod layers;
mod lineage;
mod listing_readers;
mod locations;
mod memory;
mod metrics;
mod orchestrators;
mod output_columns;
mod pipeline;
mod quarantine;
mod reliability;
mod s3;
mod schedule;
mod sql;
mod state;
mod storage_errors;
mod torture;
mod tpch;
mod units;
mod writers;
