package io.rasputin;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Map;
import java.util.TreeMap;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Test;

/**
 * The status numbers the Java side writes itself (for errors it raises
 * before a native call) agree with the C header's, so that a caller sees
 * the same number whichever side refused.
 */
class StatusNumbersTest {
    private static final Pattern STATUS = Pattern.compile("^\\s*(RASPUTIN_[A-Z_]+) = (\\d+),?\\s*$");

    /** Every status the header defines: name to number. */
    private static Map<String, Integer> headerStatuses() throws IOException {
        Path header = Path.of(System.getProperty("user.dir"), "..", "..", "include", "rasputin.h");
        Map<String, Integer> statuses = new TreeMap<>();
        for (String line : Files.readAllLines(header)) {
            Matcher matcher = STATUS.matcher(line);
            if (matcher.matches()) {
                statuses.put(matcher.group(1), Integer.parseInt(matcher.group(2)));
            }
        }
        return statuses;
    }

    @Test
    void javaStatusesMatchTheCHeader() throws IOException {
        Map<String, Integer> statuses = headerStatuses();
        assertTrue(statuses.containsKey("RASPUTIN_OK"), "the header's statuses were found: " + statuses);
        assertEquals(statuses.get("RASPUTIN_ERROR_INVALID_ARGUMENT"), RasputinClient.STATUS_INVALID_ARGUMENT);
        assertFalse(
                statuses.containsValue(RasputinClient.STATUS_CLOSED),
                "STATUS_CLOSED is the Java binding's own and must not reuse a C status: " + statuses);
    }
}
