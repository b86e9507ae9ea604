#!/usr/bin/env bash
# A real HDFS on loopback for tests and benchmarks: Hadoop's MiniDFSCluster (tests/minidfs).
#
#   scripts/minidfs.sh build                          fetch Hadoop 3.5.0 from Maven Central into
#                                                     ~/.m2 (once), compile the launcher
#   scripts/minidfs.sh run --dir D [--datanodes N] [--ha]
#                                                     start a cluster; it prints one line
#                                                     "READY url=hdfs://..." and then takes
#                                                     commands on stdin (see MiniDfs.java):
#                                                     stop-datanode I, restart-datanode I,
#                                                     failover, kill-namenode I, activate I,
#                                                     shutdown
#
# By hand: `scripts/minidfs.sh run --dir /tmp/dfs`, then use the printed URL as a replica
# (e.g. `hdfs://127.0.0.1:PORT/pacs/r1` in [storage] replicas, with a build made with
# `--features hdfs`); type `shutdown` (or Ctrl-D) to stop it.
# Needs Java 17 and Maven (Debian: openjdk-17-jre-headless maven).
set -euo pipefail
DIR="$(cd "$(dirname "$0")/../tests/minidfs" && pwd)"
CP="$DIR/target/classpath.txt"

build() {
    # Offline first (the cache is warm after one build); online only when something is missing.
    if ! mvn -q -B -o -f "$DIR/pom.xml" package dependency:build-classpath \
            -Dmdep.outputFile="$CP" >/dev/null 2>&1; then
        mvn -q -B -f "$DIR/pom.xml" package dependency:build-classpath -Dmdep.outputFile="$CP"
    fi
}

case "${1:-}" in
    build)
        build
        ;;
    run)
        shift
        if [ ! -s "$CP" ] || [ "$DIR/src/main/java/pacsd/MiniDfs.java" -nt "$DIR/target/classes/pacsd/MiniDfs.class" ]; then
            build >&2
        fi
        exec java -Xmx768m -cp "$DIR/target/classes:$(cat "$CP")" pacsd.MiniDfs "$@"
        ;;
    *)
        echo "usage: $0 build | run --dir D [--datanodes N] [--ha]" >&2
        exit 2
        ;;
esac
