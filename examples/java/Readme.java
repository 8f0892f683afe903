// The README example's sequence, in Java, against 127.0.0.1:8888.
// Run from the built jar: java -cp bindings/java/target/rasputin-client-0.1.0.jar examples/java/Readme.java
import io.rasputin.CasResult;
import io.rasputin.RasputinClient;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.List;

public class Readme {
    static byte[] b(String text) {
        return text.getBytes(StandardCharsets.UTF_8);
    }

    static void check(boolean condition, String what) {
        if (!condition) {
            throw new AssertionError(what);
        }
    }

    public static void main(String[] arguments) {
        try (RasputinClient cli = new RasputinClient(List.of("127.0.0.1:8888"))) {
            cli.set(b("k1"), b("v1"));
            check(Arrays.equals(cli.get(b("k1")), b("v1")), "get k1");

            // CAS returns the current value, and sets the success flag accordingly
            check(Arrays.equals(cli.cas(b("k1"), b("v1"), b("v12")).value(), b("v12")), "cas v1 -> v12");
            check(Arrays.equals(cli.cas(b("k1"), b("vNever"), b("vNever2")).value(), b("v12")), "failed cas value");
            CasResult failed = cli.cas(b("k1"), b("vNever"), b("vNever2"));
            check(!failed.success(), "failed cas flag");
            check(Arrays.equals(cli.cas(b("k1"), b("v12"), b("v13")).value(), b("v13")), "cas v12 -> v13");

            // deletes return the last value
            check(Arrays.equals(cli.delete(b("k1")), b("v13")), "delete returns the last value");
            check(cli.get(b("k1")) == null, "k1 is gone");
        }
        System.out.println("README example in Java: passed");
    }
}
