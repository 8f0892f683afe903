package io.rasputin;

import java.io.IOException;
import java.io.InputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;

/**
 * Loads the JNI library: from java.library.path if it is there, otherwise
 * from the copy inside this jar, extracted to a temporary file.
 */
final class NativeLibrary {
    private static final String NAME = "rasputin_jni";
    private static final String RESOURCE = "/native/linux-x86_64/lib" + NAME + ".so";

    private NativeLibrary() {}

    static void load() {
        try {
            System.loadLibrary(NAME);
        } catch (UnsatisfiedLinkError notOnPath) {
            loadFromJar(notOnPath);
        }
    }

    private static void loadFromJar(UnsatisfiedLinkError notOnPath) {
        String platform = System.getProperty("os.name") + "/" + System.getProperty("os.arch");
        try (InputStream in = NativeLibrary.class.getResourceAsStream(RESOURCE)) {
            if (in == null) {
                UnsatisfiedLinkError error = new UnsatisfiedLinkError(
                        "this jar carries the Rasputin native library for linux-x86_64 only, and " + NAME
                                + " is not on java.library.path (platform " + platform + ")");
                error.addSuppressed(notOnPath);
                throw error;
            }
            Path file = Files.createTempFile("lib" + NAME, ".so");
            file.toFile().deleteOnExit();
            Files.copy(in, file, StandardCopyOption.REPLACE_EXISTING);
            System.load(file.toAbsolutePath().toString());
        } catch (IOException e) {
            UnsatisfiedLinkError error = new UnsatisfiedLinkError("cannot extract " + RESOURCE + ": " + e);
            error.addSuppressed(notOnPath);
            throw error;
        }
    }
}
