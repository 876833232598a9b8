// Moves the leader of every partition of the given topics to another in-sync replica, with the
// Admin client of the broker's own jars (run by `cluster.sh move-leaders`, as a source file):
//
//   java -cp 'LIBDIR/*' MoveLeaders.java BOOTSTRAP TOPIC...
//
// Each partition's replica list is rotated so that the next in-sync replica after the leader
// comes first: a reassignment that moves no data, since the replicas stay the same. A preferred
// leader election then makes that replica the leader. Prints one line per partition moved, and
// "moved N of M partitions" last; exits 1 if a leader did not move within 60 s.

import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.Set;
import java.util.concurrent.ExecutionException;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewPartitionReassignment;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.common.ElectionType;
import org.apache.kafka.common.Node;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.TopicPartitionInfo;
import org.apache.kafka.common.errors.ElectionNotNeededException;

public final class MoveLeaders {
    private static final long DEADLINE_MS = 60_000;

    public static void main(String[] args) throws Exception {
        if (args.length < 2) {
            System.err.println("usage: MoveLeaders BOOTSTRAP TOPIC...");
            System.exit(2);
        }
        List<String> topics = List.of(args).subList(1, args.length);
        try (Admin admin = Admin.create(Map.of(
                AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, args[0],
                AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, 60_000))) {
            Map<TopicPartition, Integer> from = new HashMap<>();
            Map<TopicPartition, Integer> to = new HashMap<>();
            Map<TopicPartition, Optional<NewPartitionReassignment>> orders = new HashMap<>();
            int total = 0;
            for (TopicDescription topic : admin.describeTopics(topics).allTopicNames().get().values()) {
                for (TopicPartitionInfo p : topic.partitions()) {
                    total++;
                    List<Integer> replicas = ids(p.replicas());
                    List<Integer> isr = ids(p.isr());
                    if (p.leader() == null) {
                        continue;  // offline: nothing to move it from
                    }
                    int leader = p.leader().id();
                    int at = replicas.indexOf(leader);
                    for (int step = 1; step < replicas.size(); step++) {
                        int candidate = replicas.get((at + step) % replicas.size());
                        if (isr.contains(candidate)) {
                            TopicPartition tp = new TopicPartition(topic.name(), p.partition());
                            int first = replicas.indexOf(candidate);
                            List<Integer> order = new ArrayList<>(replicas.subList(first, replicas.size()));
                            order.addAll(replicas.subList(0, first));
                            from.put(tp, leader);
                            to.put(tp, candidate);
                            orders.put(tp, Optional.of(new NewPartitionReassignment(order)));
                            break;
                        }
                    }
                }
            }
            if (!orders.isEmpty()) {
                admin.alterPartitionReassignments(orders).all().get();
                long deadline = System.currentTimeMillis() + DEADLINE_MS;
                while (!admin.listPartitionReassignments(orders.keySet()).reassignments().get().isEmpty()) {
                    check(deadline, "reassignments still in progress");
                    Thread.sleep(100);
                }
                elect(admin, to.keySet());
                while (true) {
                    Map<TopicPartition, Integer> now = leaders(admin, topics);
                    if (to.entrySet().stream().allMatch(e -> e.getValue().equals(now.get(e.getKey())))) {
                        break;
                    }
                    check(deadline, "leaders not moved: wanted " + to + ", have " + now);
                    Thread.sleep(200);
                    elect(admin, to.keySet());
                }
            }
            to.forEach((tp, leader) -> System.out.println(tp + ": " + from.get(tp) + " -> " + leader));
            System.out.println("moved " + to.size() + " of " + total + " partitions");
        }
    }

    private static void elect(Admin admin, Set<TopicPartition> partitions) throws Exception {
        for (Map.Entry<TopicPartition, Optional<Throwable>> e
                : admin.electLeaders(ElectionType.PREFERRED, partitions).partitions().get().entrySet()) {
            Optional<Throwable> error = e.getValue();
            if (error.isPresent() && !(error.get() instanceof ElectionNotNeededException)) {
                // Retried by the caller's loop: e.g. the preferred replica left the ISR meanwhile.
                System.err.println(e.getKey() + ": " + error.get());
            }
        }
    }

    private static Map<TopicPartition, Integer> leaders(Admin admin, List<String> topics)
            throws InterruptedException, ExecutionException {
        Map<TopicPartition, Integer> out = new HashMap<>();
        for (TopicDescription topic : admin.describeTopics(topics).allTopicNames().get().values()) {
            for (TopicPartitionInfo p : topic.partitions()) {
                out.put(new TopicPartition(topic.name(), p.partition()),
                        p.leader() == null ? -1 : p.leader().id());
            }
        }
        return out;
    }

    private static List<Integer> ids(List<Node> nodes) {
        return nodes.stream().map(Node::id).toList();
    }

    private static void check(long deadline, String what) {
        if (System.currentTimeMillis() > deadline) {
            System.err.println("MoveLeaders: " + what);
            System.exit(1);
        }
    }
}
