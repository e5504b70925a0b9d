//! TEMPORARY placeholder on branch `planner` only, so that the workspace builds while the real
//! publisher actor is written on `main`. At merge, take `main`'s version of this file.

/// Placeholder for the publisher actor written on `main`.
#[derive(Debug)]
pub struct Publisher;
/// Placeholder.
#[derive(Debug)]
pub struct PublisherConfig;
/// Placeholder.
#[derive(Debug)]
pub struct Publish;
/// Placeholder.
#[derive(Debug)]
pub enum PublishError {}
/// Placeholder.
#[derive(Debug)]
pub struct PublisherStatus;
/// Placeholder.
#[derive(Debug)]
pub enum Status {}
