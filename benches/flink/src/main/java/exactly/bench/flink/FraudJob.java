package exactly.bench.flink;

import com.fasterxml.jackson.annotation.JsonProperty;
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.ObjectReader;

import org.apache.flink.api.common.JobExecutionResult;
import org.apache.flink.api.common.RuntimeExecutionMode;
import org.apache.flink.api.common.accumulators.LongCounter;
import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.api.common.functions.AggregateFunction;
import org.apache.flink.api.common.serialization.DeserializationSchema;
import org.apache.flink.api.common.serialization.SerializationSchema;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.configuration.CheckpointingOptions;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.configuration.StateBackendOptions;
import org.apache.flink.configuration.StateRecoveryOptions;
import org.apache.flink.connector.base.DeliveryGuarantee;
import org.apache.flink.connector.kafka.sink.KafkaRecordSerializationSchema;
import org.apache.flink.connector.kafka.sink.KafkaSink;
import org.apache.flink.connector.kafka.source.KafkaSource;
import org.apache.flink.connector.kafka.source.enumerator.initializer.OffsetsInitializer;
import org.apache.flink.connector.kafka.source.reader.deserializer.KafkaRecordDeserializationSchema;
import org.apache.flink.core.execution.CheckpointingMode;
import org.apache.flink.metrics.Counter;
import org.apache.flink.streaming.api.datastream.DataStream;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.streaming.api.functions.windowing.ProcessWindowFunction;
import org.apache.flink.streaming.api.windowing.assigners.TumblingEventTimeWindows;
import org.apache.flink.streaming.api.windowing.windows.TimeWindow;
import org.apache.flink.util.Collector;

import org.apache.kafka.clients.consumer.ConsumerRecord;

import java.lang.management.ManagementFactory;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.HashMap;
import java.util.Map;
import java.util.concurrent.atomic.AtomicLong;

/**
 * The card-fraud job of {@code exactly run}, as a Flink user writes it with the DataStream API:
 * JSON card transactions ({@code user_id, amount, card, ts}) from Kafka, read_committed, from the
 * earliest offsets to the offsets current at start (a bounded source); event time from {@code ts}
 * with 5 s bounded out-of-orderness and 30 s idleness; keyed by user; 60 s tumbling event-time
 * windows; a count; an alert ({@code user_id, window_start, window_end, count}, key = user id)
 * when a window holds more than 10 transactions; a Kafka sink, exactly once (two-phase commit on
 * 1 s checkpoints, HashMap state backend) or at least once without checkpoints. It runs in a local
 * MiniCluster from {@code main} and prints one JSON summary line on stdout when the job ends.
 *
 * <p>Malformed input records are skipped and counted (the {@code malformedRecords} metric of the
 * source, and {@code malformed} in the summary); {@code exactly gen} writes none by default.
 */
public final class FraudJob {

    static final long WINDOW_MS_DEFAULT = 60_000;
    static final long THRESHOLD = 10;
    static final Duration OUT_OF_ORDERNESS = Duration.ofSeconds(5);
    static final Duration IDLENESS = Duration.ofSeconds(30);

    /** JVM-wide (the MiniCluster runs in this process): wall-clock ms of the first record parsed. */
    static final AtomicLong FIRST_RECORD_MS = new AtomicLong(0);
    /** JVM-wide count of malformed records (re-reads after an in-process failover count again). */
    static final AtomicLong MALFORMED = new AtomicLong(0);

    /** One card transaction (a Flink POJO: public fields, public no-argument constructor). */
    public static final class CardTxn {
        @JsonProperty("user_id") public Long userId;
        @JsonProperty("amount") public Double amount;
        @JsonProperty("card") public String card;
        @JsonProperty("ts") public Long ts;

        public CardTxn() {}
    }

    /** One alert. */
    public static final class Alert {
        public long userId;
        public long windowStart;
        public long windowEnd;
        public long count;

        public Alert() {}

        Alert(long userId, long windowStart, long windowEnd, long count) {
            this.userId = userId;
            this.windowStart = windowStart;
            this.windowEnd = windowEnd;
            this.count = count;
        }

        byte[] key() {
            return Long.toString(userId).getBytes(StandardCharsets.UTF_8);
        }

        byte[] json() {
            return ("{\"user_id\":" + userId + ",\"window_start\":" + windowStart
                    + ",\"window_end\":" + windowEnd + ",\"count\":" + count + "}")
                    .getBytes(StandardCharsets.UTF_8);
        }
    }

    /** The alert's record key: the user id as text. */
    static final class AlertKey implements SerializationSchema<Alert> {
        @Override
        public byte[] serialize(Alert a) {
            return a.key();
        }
    }

    /** The alert's record value: {@code {"user_id","window_start","window_end","count"}}. */
    static final class AlertJson implements SerializationSchema<Alert> {
        @Override
        public byte[] serialize(Alert a) {
            return a.json();
        }
    }

    /**
     * Parses the record value with Jackson; a value that is not a card transaction (not JSON,
     * unknown or missing fields, wrong types) is skipped and counted.
     */
    static final class CardTxnDeserializer implements KafkaRecordDeserializationSchema<CardTxn> {
        private transient ObjectReader reader;
        private transient Counter malformed;
        private transient boolean seenFirst;

        @Override
        public void open(DeserializationSchema.InitializationContext context) {
            reader = new ObjectMapper()
                    .enable(DeserializationFeature.FAIL_ON_UNKNOWN_PROPERTIES)
                    .enable(DeserializationFeature.FAIL_ON_NULL_FOR_PRIMITIVES)
                    .readerFor(CardTxn.class);
            malformed = context.getMetricGroup().counter("malformedRecords");
        }

        @Override
        public void deserialize(ConsumerRecord<byte[], byte[]> record, Collector<CardTxn> out) {
            if (!seenFirst) {
                seenFirst = true;
                FIRST_RECORD_MS.compareAndSet(0, System.currentTimeMillis());
            }
            byte[] value = record.value();
            CardTxn t = null;
            if (value != null) {
                try {
                    t = reader.readValue(value);
                } catch (Exception e) {
                    t = null;
                }
            }
            if (t == null || t.userId == null || t.amount == null || t.card == null || t.ts == null) {
                malformed.inc();
                MALFORMED.incrementAndGet();
                return;
            }
            out.collect(t);
        }

        @Override
        public TypeInformation<CardTxn> getProducedType() {
            return TypeInformation.of(CardTxn.class);
        }
    }

    /** Incremental count per window (the window keeps one long per key, not the records). */
    static final class CountTxns implements AggregateFunction<CardTxn, Long, Long> {
        @Override public Long createAccumulator() { return 0L; }
        @Override public Long add(CardTxn t, Long acc) { return acc + 1; }
        @Override public Long getResult(Long acc) { return acc; }
        @Override public Long merge(Long a, Long b) { return a + b; }
    }

    /** The alert of a window whose count is above the threshold. */
    static final class AlertAboveThreshold extends ProcessWindowFunction<Long, Alert, Long, TimeWindow> {
        private final LongCounter alerts = new LongCounter();

        @Override
        public void open(org.apache.flink.api.common.functions.OpenContext ctx) {
            getRuntimeContext().addAccumulator("alerts", alerts);
        }

        @Override
        public void process(Long user, Context ctx, Iterable<Long> counts, Collector<Alert> out) {
            long count = counts.iterator().next();
            if (count > THRESHOLD) {
                alerts.add(1);
                out.collect(new Alert(user, ctx.window().getStart(), ctx.window().getEnd(), count));
            }
        }
    }

    static final class Args {
        String brokers = "127.0.0.1:9092";
        String input;
        String output;
        int parallelism = 1;
        boolean exactlyOnce = true;
        String transactionalIdPrefix = "flink-fraud";
        long checkpointIntervalMs = 1000;
        String checkpointDir;
        String restoreFrom;
        String jobName = "flink-fraud";
        boolean printPlan;
        boolean bounded = true;
        long windowMs = WINDOW_MS_DEFAULT;

        static Args parse(String[] argv) {
            Map<String, String> m = new HashMap<>();
            for (int i = 0; i < argv.length; i++) {
                String a = argv[i];
                if (a.equals("-h") || a.equals("--help")) {
                    usage(null);
                }
                if (!a.startsWith("--")) {
                    usage("unexpected argument " + a);
                }
                String k = a.substring(2);
                String v;
                int eq = k.indexOf('=');
                if (eq >= 0) {
                    v = k.substring(eq + 1);
                    k = k.substring(0, eq);
                } else {
                    if (i + 1 >= argv.length) usage("--" + k + " needs a value");
                    v = argv[++i];
                }
                m.put(k, v);
            }
            Args r = new Args();
            for (Map.Entry<String, String> e : m.entrySet()) {
                String v = e.getValue();
                switch (e.getKey()) {
                    case "brokers": r.brokers = v; break;
                    case "input": r.input = v; break;
                    case "output": r.output = v; break;
                    case "parallelism": r.parallelism = Integer.parseInt(v); break;
                    case "exactly-once":
                        if (!v.equals("true") && !v.equals("false")) usage("--exactly-once: true or false");
                        r.exactlyOnce = v.equals("true");
                        break;
                    case "transactional-id-prefix": r.transactionalIdPrefix = v; break;
                    case "checkpoint-interval-ms": r.checkpointIntervalMs = Long.parseLong(v); break;
                    case "checkpoint-dir": r.checkpointDir = v; break;
                    case "restore-from": r.restoreFrom = v; break;
                    case "job-name": r.jobName = v; break;
                    case "print-plan": r.printPlan = Boolean.parseBoolean(v); break;
                    case "bounded":
                        if (!v.equals("true") && !v.equals("false")) usage("--bounded: true or false");
                        r.bounded = v.equals("true");
                        break;
                    case "window-ms": r.windowMs = Long.parseLong(v); break;
                    default: usage("unknown option --" + e.getKey());
                }
            }
            if (r.input == null || r.output == null) usage("--input and --output are required");
            if (r.parallelism < 1) usage("--parallelism must be at least 1");
            if (r.windowMs < 1) usage("--window-ms must be at least 1");
            return r;
        }

        static void usage(String error) {
            String text = String.join("\n",
                    "usage: flink-fraud --input TOPIC --output TOPIC [options]",
                    "  --brokers HOST:PORT,...          default 127.0.0.1:9092",
                    "  --parallelism N                  default 1",
                    "  --exactly-once true|false        default true: EXACTLY_ONCE sink, checkpoints;",
                    "                                   false: AT_LEAST_ONCE sink, no checkpoints",
                    "  --transactional-id-prefix P      default flink-fraud (one per job)",
                    "  --checkpoint-interval-ms MS      default 1000",
                    "  --checkpoint-dir DIR             retain checkpoints there (file system), so that a",
                    "                                   killed process can be restarted from one",
                    "  --restore-from DIR/JOBID/chk-N   start from a retained checkpoint",
                    "  --job-name NAME                  default flink-fraud",
                    "  --bounded true|false             default true: stop at the offsets current at start;",
                    "                                   false: run until killed (latency benchmark)",
                    "  --window-ms MS                   default 60000 (tumbling event-time windows)",
                    "  --print-plan true                print the job graph as JSON and exit (no broker needed)",
                    "Reads the input read_committed from the earliest offsets to those current at start,",
                    "prints one JSON summary line on stdout when the job has finished.");
            if (error != null) {
                System.err.println("error: " + error);
                System.err.println(text);
                System.exit(2);
            }
            System.out.println(text);
            System.exit(0);
        }
    }

    public static void main(String[] argv) throws Exception {
        Args args = Args.parse(argv);

        Configuration conf = new Configuration();
        conf.set(StateBackendOptions.STATE_BACKEND, "hashmap");
        if (args.checkpointDir != null) {
            String dir = args.checkpointDir.contains("://")
                    ? args.checkpointDir
                    : new java.io.File(args.checkpointDir).getAbsoluteFile().toURI().toString();
            conf.set(CheckpointingOptions.CHECKPOINT_STORAGE, "filesystem");
            conf.set(CheckpointingOptions.CHECKPOINTS_DIRECTORY, dir);
            conf.set(CheckpointingOptions.EXTERNALIZED_CHECKPOINT_RETENTION,
                    org.apache.flink.configuration.ExternalizedCheckpointRetention.RETAIN_ON_CANCELLATION);
        }
        if (args.restoreFrom != null) {
            conf.set(StateRecoveryOptions.SAVEPOINT_PATH, args.restoreFrom);
        }

        StreamExecutionEnvironment env = StreamExecutionEnvironment.getExecutionEnvironment(conf);
        env.setRuntimeMode(RuntimeExecutionMode.STREAMING);
        env.setParallelism(args.parallelism);
        if (args.exactlyOnce) {
            env.enableCheckpointing(args.checkpointIntervalMs, CheckpointingMode.EXACTLY_ONCE);
        }

        var sourceBuilder = KafkaSource.<CardTxn>builder()
                .setBootstrapServers(args.brokers)
                .setTopics(args.input)
                .setStartingOffsets(OffsetsInitializer.earliest());
        if (args.bounded) {
            sourceBuilder = sourceBuilder.setBounded(OffsetsInitializer.latest());
        }
        KafkaSource<CardTxn> source = sourceBuilder
                .setProperty("isolation.level", "read_committed")
                // offsets live in Flink's checkpoints only, as exactly keeps them in its own
                .setProperty("commit.offsets.on.checkpoint", "false")
                .setDeserializer(new CardTxnDeserializer())
                .build();

        WatermarkStrategy<CardTxn> watermarks = WatermarkStrategy
                .<CardTxn>forBoundedOutOfOrderness(OUT_OF_ORDERNESS)
                .withTimestampAssigner((t, kafkaTs) -> t.ts)
                .withIdleness(IDLENESS);

        DataStream<Alert> alerts = env
                .fromSource(source, watermarks, "cards")
                .keyBy(t -> t.userId)
                .window(TumblingEventTimeWindows.of(Duration.ofMillis(args.windowMs)))
                .aggregate(new CountTxns(), new AlertAboveThreshold())
                .name("count-per-user-window");

        KafkaRecordSerializationSchema<Alert> serializer = KafkaRecordSerializationSchema.<Alert>builder()
                .setTopic(args.output)
                .setKeySerializationSchema(new AlertKey())
                .setValueSerializationSchema(new AlertJson())
                .build();

        KafkaSink<Alert> sink = KafkaSink.<Alert>builder()
                .setBootstrapServers(args.brokers)
                .setRecordSerializer(serializer)
                .setDeliveryGuarantee(args.exactlyOnce
                        ? DeliveryGuarantee.EXACTLY_ONCE
                        : DeliveryGuarantee.AT_LEAST_ONCE)
                .setTransactionalIdPrefix(args.transactionalIdPrefix)
                // the connector's default (1 h) is above the broker's transaction.max.timeout.ms
                // (15 min); 60 s as exactly's transaction_timeout_ms
                .setProperty("transaction.timeout.ms", "60000")
                .build();

        alerts.sinkTo(sink).name("alerts");

        if (args.printPlan) {
            System.out.println(env.getExecutionPlan());
            System.exit(0);
        }

        long start = System.currentTimeMillis();
        JobExecutionResult result = env.execute(args.jobName);
        long end = System.currentTimeMillis();

        long jvmStart = ManagementFactory.getRuntimeMXBean().getStartTime();
        Long alertCount = result.getAccumulatorResult("alerts");
        long first = FIRST_RECORD_MS.get();
        System.out.println("{\"job\":\"" + args.jobName + "\""
                + ",\"parallelism\":" + args.parallelism
                + ",\"exactly_once\":" + args.exactlyOnce
                + ",\"alerts\":" + (alertCount == null ? 0 : alertCount)
                + ",\"malformed\":" + MALFORMED.get()
                + ",\"jvm_start_to_first_record_ms\":" + (first == 0 ? -1 : first - jvmStart)
                + ",\"jvm_start_to_end_ms\":" + (end - jvmStart)
                + ",\"execute_ms\":" + (end - start)
                + ",\"net_runtime_ms\":" + result.getNetRuntime()
                + "}");
        // the MiniCluster's non-daemon threads may linger: the job is done
        System.exit(0);
    }
}
