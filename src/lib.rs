//! pacsd: a DICOM archive node (PACS SCP). See DESIGN.md for the architecture and the
//! durability contract; `node::Node` wires the parts together.

pub mod archive;
pub mod audit;
pub mod calendar;
pub mod charset;
pub mod config;
pub mod crashpoint;
pub mod dataset;
pub mod dicomjson;
pub mod dicomxml;
pub mod dimse;
#[doc(hidden)]
pub mod fuzzing;
pub mod ha;
pub mod http;
pub mod index;
pub mod metrics;
pub mod net;
pub mod node;
pub mod part10;
pub mod render;
pub mod service;
pub mod storage;
pub mod synth;
pub mod tools;
