package pacsd;

import java.io.BufferedReader;
import java.io.File;
import java.io.InputStreamReader;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.hdfs.HdfsConfiguration;
import org.apache.hadoop.hdfs.MiniDFSCluster;
import org.apache.hadoop.hdfs.MiniDFSNNTopology;

/**
 * A real HDFS for pacsd's tests and benchmarks: Hadoop's MiniDFSCluster (NameNodes and DataNodes
 * in this JVM) on 127.0.0.1 only.
 *
 * <p>Arguments: {@code --dir DIR} (where the cluster keeps its blocks and edits; required),
 * {@code --datanodes N} (default 3), {@code --ha} (two NameNodes in an HA pair under the
 * nameservice {@code pacsns}, the first active), {@code --bind ADDR} (for a cluster inside a
 * network namespace of the HA lab: every service listens on all of the namespace's addresses
 * and DataNodes are named ADDR, which clients with {@code dfs.client.use.datanode.hostname}
 * connect to; without it everything is on 127.0.0.1).
 *
 * <p>When the cluster is up it prints one line and then answers commands read from stdin, one
 * per line, each answered by one line starting with {@code OK} or {@code ERR}:
 * <pre>
 * READY url=hdfs://127.0.0.1:PORT                                  (single NameNode)
 * READY url=hdfs://pacsns dfs.ha.namenodes.pacsns=nn0,nn1 dfs.namenode.rpc-address.pacsns.nn0=127.0.0.1:P0 ...
 * stop-datanode I       the DataNode is shut down (its blocks stay on disk)
 * restart-datanode I    a stopped DataNode starts again on its old ports and blocks
 * failover              the active NameNode becomes standby and the other active (HA)
 * kill-namenode I       NameNode I is shut down (HA: then `activate` the other)
 * restart-namenode I    NameNode I starts again on its old port and metadata
 * activate I            NameNode I becomes active (HA)
 * shutdown              everything stops and the program exits (as does end of stdin)
 * </pre>
 * The words after READY are what an HDFS client needs: the URL, then the client configuration
 * (key=value) for a nameservice.
 */
public class MiniDfs {
    static final String NAMESERVICE = "pacsns";

    public static void main(String[] args) throws Exception {
        String dir = null;
        int dataNodes = 3;
        boolean haPair = false;
        String bind = null;
        for (int i = 0; i < args.length; i++) {
            switch (args[i]) {
                case "--dir" -> dir = args[++i];
                case "--datanodes" -> dataNodes = Integer.parseInt(args[++i]);
                case "--ha" -> haPair = true;
                case "--bind" -> bind = args[++i];
                default -> {
                    System.err.println("unknown argument " + args[i]);
                    System.exit(2);
                }
            }
        }
        if (dir == null) {
            System.err.println("--dir is required");
            System.exit(2);
        }

        Configuration conf = new HdfsConfiguration();
        conf.set(MiniDFSCluster.HDFS_MINIDFS_BASEDIR, new File(dir).getAbsolutePath());
        // Loopback only unless told to serve a namespace: no service of the cluster listens
        // beyond this machine (a lab namespace reaches nothing but its own bridge).
        String listen = bind == null ? "127.0.0.1" : "0.0.0.0";
        conf.set("dfs.namenode.rpc-bind-host", listen);
        conf.set("dfs.namenode.http-bind-host", listen);
        conf.set("dfs.datanode.address", listen + ":0");
        conf.set("dfs.datanode.http.address", listen + ":0");
        conf.set("dfs.datanode.ipc.address", listen + ":0");
        if (bind != null) {
            conf.set("dfs.datanode.hostname", bind);
        }
        conf.set("dfs.blocksize", String.valueOf(16 << 20));
        conf.set("dfs.replication", String.valueOf(Math.min(3, dataNodes)));
        // A closed file is on the DataNodes' disks, not only in their memory: what pacsd's
        // durability contract assumes of a replica that acknowledged a put.
        conf.set("dfs.datanode.synconclose", "true");
        // A dead DataNode is noticed within seconds, not the default ten minutes.
        conf.set("dfs.heartbeat.interval", "1");
        conf.set("dfs.namenode.heartbeat.recheck-interval", "2000");
        // New blocks avoid a DataNode silent for 3 s (the shortest this may be): HDFS clients
        // without pipeline-setup retries (hdfs-native 0.14) fail every write whose pipeline
        // starts on a dead DataNode until the NameNode stops choosing it.
        conf.set("dfs.namenode.avoid.write.stale.datanode", "true");
        conf.set("dfs.namenode.avoid.read.stale.datanode", "true");
        conf.set("dfs.namenode.stale.datanode.interval", "3000");
        // The standby NameNode follows the edits closely, so a failover has little to replay.
        conf.set("dfs.ha.tail-edits.period", "100ms");

        MiniDFSCluster.Builder builder = new MiniDFSCluster.Builder(conf)
            .numDataNodes(dataNodes)
            // The DataNode addresses above, not MiniDFSCluster's own 127.0.0.1 ones.
            .checkDataNodeAddrConfig(true)
            .format(true);
        if (bind != null) {
            // Each DataNode's registered name (MiniDFSCluster sets its own otherwise).
            String[] hosts = new String[dataNodes];
            java.util.Arrays.fill(hosts, bind);
            builder.hosts(hosts);
        }
        if (haPair) {
            builder.nnTopology(new MiniDFSNNTopology().addNameservice(
                new MiniDFSNNTopology.NSConf(NAMESERVICE)
                    .addNN(new MiniDFSNNTopology.NNConf("nn0"))
                    .addNN(new MiniDFSNNTopology.NNConf("nn1"))));
        } else {
            builder.nameNodePort(0);
        }
        MiniDFSCluster dfs = builder.build();
        if (haPair) {
            dfs.transitionToActive(0);
        }
        dfs.waitActive();

        System.out.println("READY " + String.join(" ", clientSettings(dfs, haPair, bind)));
        System.out.flush();

        final boolean ha = haPair;
        Map<Integer, MiniDFSCluster.DataNodeProperties> stopped = new HashMap<>();
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        String line;
        while ((line = in.readLine()) != null) {
            String[] w = line.trim().split("\\s+");
            if (w.length == 0 || w[0].isEmpty()) {
                continue;
            }
            try {
                switch (w[0]) {
                    case "stop-datanode" -> {
                        int i = Integer.parseInt(w[1]);
                        // Indices stay those of the start: a stopped DataNode leaves the list.
                        int at = indexOf(dfs, i, stopped);
                        stopped.put(i, dfs.stopDataNode(at));
                        System.out.println("OK stopped datanode " + i);
                    }
                    case "restart-datanode" -> {
                        int i = Integer.parseInt(w[1]);
                        MiniDFSCluster.DataNodeProperties p = stopped.remove(i);
                        if (p == null) {
                            throw new IllegalArgumentException("datanode " + i + " is not stopped");
                        }
                        dfs.restartDataNode(p, true);
                        dfs.waitActive();
                        System.out.println("OK restarted datanode " + i);
                    }
                    case "failover" -> {
                        int active = dfs.getNameNode(0).isActiveState() ? 0 : 1;
                        dfs.transitionToStandby(active);
                        dfs.transitionToActive(1 - active);
                        System.out.println("OK active namenode " + (1 - active));
                    }
                    case "kill-namenode" -> {
                        int i = Integer.parseInt(w[1]);
                        dfs.shutdownNameNode(i);
                        System.out.println("OK killed namenode " + i);
                    }
                    case "restart-namenode" -> {
                        int i = Integer.parseInt(w[1]);
                        dfs.restartNameNode(i, !ha);
                        if (!ha) {
                            dfs.waitActive();
                        }
                        System.out.println("OK restarted namenode " + i);
                    }
                    case "activate" -> {
                        int i = Integer.parseInt(w[1]);
                        dfs.transitionToActive(i);
                        System.out.println("OK active namenode " + i);
                    }
                    case "shutdown" -> {
                        dfs.shutdown();
                        System.out.println("OK shut down");
                        System.exit(0);
                    }
                    default -> System.out.println("ERR unknown command " + w[0]);
                }
            } catch (Exception e) {
                System.out.println("ERR " + e.toString().replace('\n', ' '));
            }
            System.out.flush();
        }
        dfs.shutdown();
        System.exit(0);
    }

    /** Where DataNode `i` (numbered at start) is in the cluster's list of running ones. */
    static int indexOf(MiniDFSCluster dfs, int i, Map<Integer, MiniDFSCluster.DataNodeProperties> stopped) {
        if (stopped.containsKey(i)) {
            throw new IllegalArgumentException("datanode " + i + " is already stopped");
        }
        int at = i;
        for (int s : stopped.keySet()) {
            if (s < i) {
                at--;
            }
        }
        if (at < 0 || at >= dfs.getDataNodes().size()) {
            throw new IllegalArgumentException("no datanode " + i);
        }
        return at;
    }

    /** The URL and, for a nameservice, the client configuration, as words. */
    static List<String> clientSettings(MiniDFSCluster dfs, boolean ha, String bind) {
        List<String> words = new ArrayList<>();
        if (!ha) {
            InetSocketAddress a = dfs.getNameNode().getNameNodeAddress();
            words.add("url=hdfs://" + (bind == null ? "127.0.0.1" : bind) + ":" + a.getPort());
            if (bind != null) {
                words.add("dfs.client.use.datanode.hostname=true");
            }
            return words;
        }
        words.add("url=hdfs://" + NAMESERVICE);
        words.add("dfs.ha.namenodes." + NAMESERVICE + "=nn0,nn1");
        for (int i = 0; i < 2; i++) {
            InetSocketAddress a = dfs.getNameNode(i).getNameNodeAddress();
            words.add("dfs.namenode.rpc-address." + NAMESERVICE + ".nn" + i + "=127.0.0.1:" + a.getPort());
        }
        return words;
    }
}
