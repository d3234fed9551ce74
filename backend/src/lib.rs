//! flow-backend: receives flow-agent reports and answers the AWS Network Flow Monitor API
//! (version 2023-04-19, REST-JSON) so that the AWS SDKs and CLI work against it with
//! `--endpoint-url`.

pub mod api;
pub mod errors;
pub mod health;
pub mod ingest;
pub mod model;
pub mod query_engine;
pub mod server;
pub mod sigv4;
pub mod store;
pub mod validate;
